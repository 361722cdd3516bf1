"""The ram / openset stages and the tiny RAM-family models (offline, tiny random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ram_grounded.errors import ConfigError
from ram_grounded.models.ram_family import build_tiny, preprocess, tag2text_delete_tag_index
from ram_grounded.pipeline import Pipeline
from ram_grounded.record import Record
from ram_grounded.stages.openset import OpenSetTagger
from ram_grounded.stages.tagging import RamTagger

REPO = Path(__file__).resolve().parents[1]


class Card:
    def __init__(self, arch: str) -> None:
        self.arch = arch


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 48), (30, 90), (224, 224)]]


def _records() -> list[Record]:
    return [Record(image=img, source=f"img{i}") for i, img in enumerate(_images())]


def test_preprocess_modes_follow_pil_convert() -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    gray = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    assert torch.equal(preprocess([rgba], 32), preprocess([Image.fromarray(rgba[..., :3])], 32))
    assert torch.equal(preprocess([gray], 32), preprocess([np.repeat(gray[..., None], 3, axis=2)], 32))
    x = preprocess([rgba, gray], 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    with pytest.raises(Exception):
        preprocess([rgba.astype(np.float32)], 32)


@pytest.mark.parametrize("arch", ["ram", "ram_plus", "tag2text"])
def test_tiny_models_tag_in_one_batch(arch: str) -> None:
    model = build_tiny(Card(arch), seed=0)
    pixels = preprocess(_images(), model.image_size)
    batch = model.predict(pixels)
    assert batch.logits.shape == (3, len(model.tag_list))
    singles = [model.predict(pixels[i : i + 1]) for i in range(3)]
    assert torch.allclose(batch.probs, torch.cat([s.probs for s in singles]), atol=1e-5)
    assert any(batch.indices(b) for b in range(3))  # the tiny model reports something
    if arch == "tag2text":
        assert model.tokenizer is not None
        assert not set(tag2text_delete_tag_index()) & {i for b in range(3) for i in batch.indices(b)}


def test_threshold_parameter_really_acts() -> None:
    model = build_tiny(Card("ram"), seed=0)
    pixels = preprocess(_images()[:1], model.image_size)
    everything = model.predict(pixels, threshold=0.0)
    nothing = model.predict(pixels, threshold=1.0)
    official = model.predict(pixels)
    assert len(everything.indices(0)) == len(model.tag_list)
    assert nothing.indices(0) == []
    want = (official.probs[0] > model.class_threshold).nonzero().flatten().tolist()
    assert official.indices(0) == want


def test_ram_stage_writes_tags_scores_and_chinese(tiny_zoo) -> None:
    stage = RamTagger(model="ram")
    records = stage(_records())
    model = stage._model
    pred = model.predict(preprocess(_images(), model.image_size))
    for b, record in enumerate(records):
        assert [t.name for t in record.tags] == [model.tag_list[i] for i in pred.indices(b)]
        for tag in record.tags:
            i = model.tag_list.index(tag.name)
            assert tag.score == pytest.approx(float(pred.probs[b, i]))
            assert tag.translations["zh"] == model.tag_list_chinese[i].strip()
        assert record.meta["ram"]["threshold"] == "per-class"


def test_ram_stage_threshold_exclude_and_class_file(tiny_zoo, tmp_path: Path, caplog) -> None:
    low = RamTagger(model="ram", threshold=0.0, exclude=["dog", "Cat"])(_records())
    names = {t.name for t in low[0].tags}
    assert "dog" not in names and "cat" not in names and len(names) == 4585 - 2
    thr_file = tmp_path / "thr.txt"
    thr_file.write_text("0.0\n0.0\n1.0\n", encoding="utf-8")
    stage = RamTagger(model="ram", class_thresholds=str(thr_file))
    records = stage(_records())
    first = stage._model.tag_list[:3]
    for record in records:
        names = [t.name for t in record.tags]
        assert first[0] in names and first[1] in names and first[2] not in names
    with caplog.at_level("WARNING"):  # unknown names are reported, not fatal (annotate --exclude)
        RamTagger(model="ram", exclude=["no such tag xyz"])(_records())
    assert "no such tag xyz" in caplog.text
    with pytest.raises(ConfigError):
        RamTagger(model="ram", threshold=1.5)


def test_openset_stage(tiny_zoo, tmp_path: Path) -> None:
    cats = ["red kite", "wind turbine", "lighthouse"]
    stage = OpenSetTagger(model="ram_plus", categories=cats, threshold=0.0, cache_dir=str(tmp_path))
    records = stage(_records())
    assert all([t.name for t in r.tags] == cats for r in records)
    none = OpenSetTagger(model="ram", categories=cats, threshold=1.0, cache_dir=str(tmp_path))(_records())
    assert all(r.tags == [] for r in none)
    with pytest.raises(ConfigError):
        OpenSetTagger(model="tag2text", categories=cats, cache_dir=str(tmp_path))(_records())
    with pytest.raises(ConfigError):
        OpenSetTagger(categories=[])


@pytest.mark.parametrize("name", ["ram_tags", "ram_openset"])
def test_ready_pipelines_load(name: str) -> None:
    pipe = Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml")
    assert pipe.stages[0].name in ("ram", "openset")
