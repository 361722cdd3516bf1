"""RAM, RAM++ and Tag2Text against the official outputs in the golden fixtures.

Everything is built from each folder's config.json and files (any root with the same layout
works: ``RAM_GROUNDED_GOLDEN``). A missing or unreadable folder fails.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ram_grounded.models.ram_family import build_from_golden, preprocess
from ram_grounded.models.tag_select import make_prediction

REPO = Path(__file__).resolve().parents[1]
GOLDEN_ROOT = Path(os.environ.get("RAM_GROUNDED_GOLDEN", REPO.parent / "shared" / "golden"))
FAMILY_DIR = GOLDEN_ROOT / "ram"
MODELS = ["ram", "ram_plus", "tag2text"]
PROB_TOL = 1e-4
PIXEL_TOL = 1e-5


def _extra_models() -> list[str]:
    found = sorted(p.parent.name for p in FAMILY_DIR.glob("*/config.json")) if FAMILY_DIR.is_dir() else []
    return [m for m in found if m not in MODELS]


ALL_MODELS = MODELS + _extra_models()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@lru_cache(maxsize=None)
def fixture(name: str) -> dict:
    folder = FAMILY_DIR / name
    if not (folder / "config.json").is_file():
        pytest.fail(f"golden folder {folder} is missing or has no config.json (set RAM_GROUNDED_GOLDEN)")
    torch.set_num_threads(1)
    expected_json = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    inputs = _tensors(folder / "inputs.safetensors")
    order = expected_json["order"]
    return {
        "folder": folder,
        "config": json.loads((folder / "config.json").read_text(encoding="utf-8")),
        "model": build_from_golden(folder),
        "inputs": inputs,
        "expected": _tensors(folder / "expected.safetensors"),
        "json": expected_json,
        "order": order,
        "pixels": torch.stack([inputs[f"pixel_values.{n}"] for n in order]),
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_checkpoint_keys_are_the_official_state_dict(name: str) -> None:
    fx = fixture(name)
    ours = {k: list(v.shape) for k, v in fx["model"].state_dict().items()}
    assert ours == fx["config"]["state_dict_keys"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_preprocessing_matches_official(name: str) -> None:
    fx = fixture(name)
    size = fx["config"]["image_size"]
    raw = [fx["inputs"][f"raw_rgb_uint8.{n}"].numpy() for n in fx["order"]]
    assert _max_diff(preprocess(raw, size), fx["pixels"]) <= PIXEL_TOL
    files = [Image.open(fx["folder"] / "images" / fx["json"]["images"][n]["file"]) for n in fx["order"]]
    assert _max_diff(preprocess(files, size), fx["pixels"]) <= PIXEL_TOL


@pytest.mark.parametrize("name", ALL_MODELS)
def test_visual_encoder_and_logits(name: str) -> None:
    fx = fixture(name)
    model, exp = fx["model"], fx["expected"]
    with torch.no_grad():
        for i, n in enumerate(fx["order"]):
            x = fx["pixels"][i : i + 1]
            assert _max_diff(model.visual_encoder(x)[0], exp[f"visual_encoder_out.{n}"]) <= 1e-4
            logits = model(x)[0]
            assert _max_diff(logits, exp[f"logits.{n}"]) <= PROB_TOL
            assert _max_diff(torch.sigmoid(logits), exp[f"probs.{n}"]) <= PROB_TOL


@pytest.mark.parametrize("name", ALL_MODELS)
def test_class_threshold(name: str) -> None:
    fx = fixture(name)
    assert torch.equal(fx["model"].class_threshold.cpu(), fx["expected"]["class_threshold"])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_tag_strings(name: str) -> None:
    fx = fixture(name)
    model = fx["model"]
    for i, n in enumerate(fx["order"]):
        exp = fx["json"]["images"][n]
        pred = model.predict(fx["pixels"][i : i + 1])
        assert pred.tag_string(0) == exp["tags"]
        if "tags_chinese" in exp:
            assert pred.tag_string_chinese(0) == exp["tags_chinese"]
        raw = make_prediction(pred.logits, model.class_threshold, model.tag_list)
        assert raw.indices(0) == exp["fired_class_indices_before_delete"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_batch_equals_one_by_one(name: str) -> None:
    fx = fixture(name)
    model, exp = fx["model"], fx["expected"]
    batch = model.predict(fx["pixels"])
    assert _max_diff(batch.logits, exp["batch.logits"]) <= PROB_TOL
    assert _max_diff(batch.probs, exp["batch.probs"]) <= PROB_TOL
    singles = [model.predict(fx["pixels"][i : i + 1]) for i in range(len(fx["order"]))]
    assert _max_diff(batch.probs, torch.cat([s.probs for s in singles])) <= 1e-5
    assert batch.tag_strings() == [s.tag_string(0) for s in singles] == fx["json"]["batch"]["tags"]
    if "tags_chinese" in fx["json"]["batch"]:
        assert batch.tag_strings_chinese() == fx["json"]["batch"]["tags_chinese"]


@pytest.mark.parametrize("name", [m for m in ALL_MODELS if m != "tag2text"])
def test_openset(name: str) -> None:
    fx = fixture(name)
    model, exp, oj = fx["model"], fx["expected"], fx["json"]["openset"]
    cats, embed = oj["categories"], exp["openset.label_embed"]
    assert embed.shape[0] == oj["label_embed_rows"] == len(cats) * oj["des_per_class"]
    batch = model.predict_openset(fx["pixels"], cats, embed, oj["threshold"])
    assert _max_diff(batch.logits, exp["openset.batch.logits"]) <= PROB_TOL
    assert batch.tag_strings() == oj["batch_tags"]
    for i, n in enumerate(fx["order"]):
        one = model.predict_openset(fx["pixels"][i : i + 1], cats, embed, oj["threshold"])
        assert _max_diff(one.logits[0], exp[f"openset.logits.{n}"]) <= PROB_TOL
        assert _max_diff(one.probs[0], exp[f"openset.probs.{n}"]) <= PROB_TOL
        assert one.tag_string(0) == oj["images"][n]["tags"]
    # the model's own label embedding is untouched by the open-set call
    assert model.predict(fx["pixels"][:1]).tag_string(0) == fx["json"]["images"][fx["order"][0]]["tags"]
