"""The ``tag2text_caption`` stage on the tiny Tag2Text (RAM_GROUNDED_ZOO=tiny)."""

from __future__ import annotations

import numpy as np
import pytest

from ram_grounded.errors import ConfigError
from ram_grounded.models.captioning import generate_captions
from ram_grounded.models.ram_family import preprocess
from ram_grounded.pipeline import Pipeline
from ram_grounded.pipeline_yaml import load_pipeline
from ram_grounded.record import Record, Tag
from ram_grounded.stages.captioning import Tag2TextCaptioner


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is much faster (and immune to CPU oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), np.full((40, 30, 3), 200, np.uint8)]


def _records(tags: list[list[str]] | None = None) -> list[Record]:
    tags = tags or [[], []]
    return [Record(image=im, source=f"img{i}", tags=[Tag(n, 0.9) for n in tags[i]])
            for i, im in enumerate(_images())]


def test_stage_matches_direct_generation_for_each_tag_source(tiny_zoo) -> None:
    own = Tag2TextCaptioner(device="cpu")
    records = own(_records())
    model = own._model
    pixels = preprocess(_images(), model.image_size)
    direct = generate_captions(model, pixels, None)
    assert [r.caption for r in records] == direct.captions
    assert [r.meta["tag2text_caption"]["tags"] for r in records] == direct.tags

    user = Tag2TextCaptioner(device="cpu", user_tags="tennis,bear cub")
    records = user(_records())
    direct = generate_captions(model, pixels, ["tennis | bear cub"] * 2)
    assert [r.caption for r in records] == direct.captions
    assert all(r.meta["tag2text_caption"]["tag_source"] == "user" for r in records)

    from_record = Tag2TextCaptioner(device="cpu", use_record_tags=True)
    records = from_record(_records([["dog", "grass"], []]))
    direct = generate_captions(model, pixels, ["dog | grass", ""])
    assert [r.caption for r in records] == direct.captions
    assert [r.meta["tag2text_caption"]["tags"] for r in records] == ["dog | grass", ""]


def test_batch_equals_single_images(tiny_zoo) -> None:
    stage = Tag2TextCaptioner(device="cpu", num_beams=2, max_length=16, min_length=6)
    batch = [r.caption for r in stage(_records())]
    single = [stage([r])[0].caption for r in _records()]
    assert batch == single


def test_ready_pipeline_and_field_checks(tiny_zoo) -> None:
    pipe = load_pipeline("tag2text_caption")
    assert [s.name for s in pipe.stages] == ["tag2text_caption"]
    assert pipe.stages[0].num_beams == 3 and pipe.stages[0].max_length == 50
    record = pipe(_images()[0])
    assert isinstance(record.caption, str) and record.error is None
    # use_record_tags needs an earlier stage that writes tags
    with pytest.raises(ConfigError):
        Pipeline([Tag2TextCaptioner(use_record_tags=True)])
    Pipeline([Tag2TextCaptioner(use_record_tags=True)], inputs=["tags"])


def test_parameter_errors() -> None:
    with pytest.raises(ConfigError):
        Tag2TextCaptioner(num_beams=0)
    with pytest.raises(ConfigError):
        Tag2TextCaptioner(min_length=60, max_length=50)
    with pytest.raises(ConfigError):
        Tag2TextCaptioner(use_record_tags=True, user_tags="dog")
