"""The vision-language ready pipelines: listed, loadable, round-trip through YAML, run on assets/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ram_grounded.pipeline import Pipeline
from ram_grounded.pipeline_yaml import list_pipelines, load_pipeline

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VL_PIPELINES = ["caption_verify", "git_caption", "git_vqa", "zeroshot"]
#: stage name -> parameters that are thresholds; every pipeline YAML must state them
THRESHOLDS = {"itm": {"filter", "caption_threshold", "box_threshold"},
              "zeroshot_classify": {"filter", "score_threshold"},
              "grounding_dino": {"box_threshold", "text_threshold", "iou_threshold"}}


@pytest.fixture(autouse=True)
def _tiny_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAM_GROUNDED_ZOO", "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _assets() -> list[Path]:
    images = sorted(p for p in ASSETS.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    assert images, f"no demo images in {ASSETS}"
    return images


@pytest.mark.parametrize("name", VL_PIPELINES)
def test_pipeline_is_listed_loads_and_states_thresholds(name: str) -> None:
    path = list_pipelines()[name]
    spec = yaml.safe_load(path.read_text())
    for item in spec["stages"]:
        missing = THRESHOLDS.get(item["stage"], set()) - set(item.get("params") or {})
        assert not missing, f"{name}: stage {item['stage']} does not state {sorted(missing)}"
    pipe = Pipeline.from_yaml(path)
    assert pipe.name == name and [s.name for s in pipe.stages] == [i["stage"] for i in spec["stages"]]
    again = Pipeline.from_yaml(pipe.to_yaml())
    assert [s.params() for s in again.stages] == [s.params() for s in pipe.stages]


def test_git_caption_runs_on_assets() -> None:
    records = list(load_pipeline("git_caption", device="cpu").run(_assets(), batch_size=2))
    assert len(records) == len(_assets())
    for record in records:
        assert record.error is None and isinstance(record.caption, str)
        assert record.checks["caption_logprob"] <= 0.0
        assert record.meta["git_caption"]["model"] == "git-base-coco"


def test_git_vqa_runs_on_assets_with_a_question_per_record() -> None:
    pipe = load_pipeline("git_vqa", device="cpu")
    records = [pipe.to_record(p) for p in _assets()]
    records[0].meta["question"] = "how many people are there?"
    pipe.process_batch(records)
    for i, record in enumerate(records):
        assert record.error is None
        want = "how many people are there?" if i == 0 else pipe.stages[0].question
        assert record.checks["vqa"]["question"] == want and isinstance(record.checks["vqa"]["answer"], str)


def test_caption_verify_runs_on_assets_and_keeps_flagged_captions() -> None:
    records = list(load_pipeline("caption_verify", device="cpu").run(_assets(), batch_size=2))
    for record in records:
        assert record.error is None and record.caption
        score = record.checks["caption_itm"]
        assert 0.0 <= score <= 1.0 and -1.0 <= record.checks["caption_itc"] <= 1.0
        assert record.checks["caption_itm_pass"] == (score >= record.meta["itm"]["caption_threshold"])


def test_zeroshot_runs_on_assets() -> None:
    pipe = load_pipeline("zeroshot", device="cpu")
    categories = next(s for s in pipe.stages if s.name == "zeroshot_classify").categories
    for record in pipe.run(_assets(), batch_size=2):
        assert record.error is None
        det = record.detections
        assert record.prompt[: len(categories)] == categories
        assert "zeroshot_score" in det.data and "zeroshot_class" in det.data
        for i in range(len(det)):
            assert record.prompt[det.class_id[i]] == det.data["class_name"][i]
        if len(det):
            assert det.mask is not None and det.mask.shape[1:] == record.image.shape[:2]
