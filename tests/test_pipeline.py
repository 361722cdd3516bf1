"""Pipeline: field checks, streaming in order, per-record errors, timings, YAML round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
import supervision as sv

from ram_grounded import ConfigError, Pipeline, Record, Stage, Tag, register_stage
from ram_grounded.pipeline_yaml import build_stage, load_yaml


@register_stage
@dataclass(eq=False)
class MeanTagger(Stage):
    """Test stage: one tag whose score is the image's mean brightness."""

    name: ClassVar[str] = "test_mean_tagger"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"tags"})
    label: str = "bright"
    scale: float = 1.0
    batches: list = field(default_factory=list, init=False, repr=False)

    def process(self, records):
        self.batches.append(len(records))
        for r in records:
            r.tags = [Tag(self.label, float(r.image.mean()) / 255.0 * self.scale)]
        return records


@register_stage
@dataclass(eq=False)
class BoxFromTags(Stage):
    """Test stage: one full-image box per prompt class; fails on images wider than ``max_width``."""

    name: ClassVar[str] = "test_box_from_prompt"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "prompt"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections"})
    max_width: int = 10_000

    def process(self, records):
        for r in records:
            h, w = r.image.shape[:2]
            if w > self.max_width:
                raise ValueError(f"too wide: {w}")
            n = len(r.prompt)
            r.detections = sv.Detections(xyxy=np.tile([0, 0, w, h], (n, 1)).astype(np.float32),
                                         class_id=np.arange(n))
        return records


def _img(value: int, w: int = 8) -> np.ndarray:
    return np.full((6, w, 3), value, np.uint8)


def test_missing_field_names_the_stage_and_a_writer():
    with pytest.raises(ConfigError) as err:
        Pipeline([BoxFromTags()])
    msg = str(err.value)
    assert "test_box_from_prompt" in msg and "'prompt'" in msg
    Pipeline([BoxFromTags()], inputs=["prompt"])  # supplied by the caller: fine


def test_run_streams_in_order_with_errors_on_records(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    stage = MeanTagger()
    pipe = Pipeline([stage])
    sources = [_img(10), str(bad), _img(200), _img(30), b"not an image", _img(90)]
    out = list(pipe.run(sources, batch_size=4))
    assert len(out) == 6
    assert [r.error is None for r in out] == [True, False, True, True, False, True]
    assert out[1].error and "broken.png" in out[1].error
    good = [r for r in out if r.ok]
    assert [round(r.tags[0].score * 255) for r in good] == [10, 200, 30, 90]
    assert all("test_mean_tagger" in r.meta["timings"] for r in good)
    assert stage.batches == [3, 1]  # bad records never reach the stage; one call per batch


def test_a_stage_failure_marks_only_the_failing_record():
    pipe = Pipeline([BoxFromTags(max_width=50)], inputs=["prompt"])
    records = [Record(image=_img(1, w), source=str(w), prompt=["a", "b"]) for w in (8, 99, 20)]
    out = list(pipe.run(records, batch_size=3))
    assert [r.ok for r in out] == [True, False, True]
    assert "too wide" in out[1].error
    assert len(out[0].detections) == 2 and out[2].detections.xyxy[0, 2] == 20


def test_call_returns_one_record():
    rec = Pipeline([MeanTagger(label="x")])(_img(255))
    assert rec.tags[0].name == "x" and rec.tags[0].score == pytest.approx(1.0)


def test_yaml_round_trip(tmp_path):
    pipe = Pipeline([MeanTagger(label="lamp", scale=2.0), BoxFromTags(max_width=64)],
                    inputs=["prompt"], name="demo", description="a test")
    text = pipe.to_yaml(tmp_path / "demo.yaml")
    again = Pipeline.from_yaml(tmp_path / "demo.yaml")
    assert again.to_yaml() == text
    assert again.stages[0].label == "lamp" and again.stages[0].scale == 2.0 and again.stages[1].max_width == 64


@pytest.mark.parametrize("body, expected", [
    ("stages:\n  - stage: no_such_stage\n", ["no_such_stage", "known stages", "test_mean_tagger"]),
    ("stages:\n  - stage: test_mean_tagger\n    params: {lable: x}\n", ["test_mean_tagger", "lable", "allowed", "label"]),
    ("stages:\n  - stage: test_mean_tagger\n    params: {scale: high}\n", ["test_mean_tagger", "scale", "float"]),
    ("stages:\n  - stage: test_mean_tagger\n    params: {label: 3}\n", ["label", "str"]),
    ("stages: [1, 2\n", ["not valid YAML"]),
])
def test_yaml_errors_are_one_line_and_name_file_and_stage(tmp_path, body, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for word in expected:
        assert word in msg


def test_int_accepted_for_float_parameter():
    assert build_stage("test_mean_tagger", {"scale": 2}).scale == 2


def test_a_model_that_cannot_load_stops_the_run_once():
    from ram_grounded import ModelStage, WeightsError

    @dataclass(eq=False)
    class NoWeights(ModelStage):
        name: ClassVar[str] = "test_no_weights"
        reads: ClassVar[frozenset[str]] = frozenset({"image"})
        writes: ClassVar[frozenset[str]] = frozenset({"tags"})

        def load(self):
            raise WeightsError("weights missing", hint="put them there")

        def process(self, records):
            return records

    with pytest.raises(WeightsError, match="weights missing"):
        list(Pipeline([NoWeights()]).run([_img(1), _img(2)]))
