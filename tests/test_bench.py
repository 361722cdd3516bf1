"""The bench machinery on the tiny zoo (real sizes are a benchmark, not a test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ram_grounded import zoo
from ram_grounded.bench import RssSampler, random_weights, run_bench, synthetic_images
from ram_grounded.bench_workload import ShapeBoxes, ShapeTags, naive_sam
from ram_grounded.cli import app
from ram_grounded.errors import ConfigError
from ram_grounded.record import Record, Tag


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


def test_pipeline_figures_and_baseline_ratio(tiny_zoo):
    res = run_bench("ram_grounded_sam", images=2, size=(64, 48), batch_size=2, weights="tiny", tags=5, boxes=3,
                    warmup=0, baseline=True, threads=1)
    assert res.stages == ["ram", "prompt_from_tags", "grounding_dino", "sam"]
    for run, bs in ((res.batched, 2), (res.baseline, 1)):
        assert run.batch_size == bs and run.total_s > 0 and run.images_per_s > 0
        assert run.tags_per_image == 5 and run.boxes_per_image == 3  # the fixed workload reached SAM
        assert [s.name for s in run.stages] == res.stages
        for s in run.stages:
            assert s.median_s >= 0 and s.peak_rss_mb > 0 and s.extra_mb >= 0
        model_stages = [s for s in run.stages if s.name != "prompt_from_tags"]
        assert all(s.median_s > 0 and s.params_m > 0 for s in model_stages)
    assert res.speedup == pytest.approx(res.baseline.total_s / res.batched.total_s)
    assert res.threads == 1 and res.images == 2 and res.peak_rss_mb > 0
    from ram_grounded.commands.bench import format_markdown, format_result

    table = format_markdown(res)
    assert table.count("\n") == len(res.stages) + 2 and f"{res.speedup:.1f}x" in table
    assert "ratio" in format_result(res)
    data = res.to_dict()
    json.dumps(data)  # serialisable
    assert data["speedup"] == res.speedup and "baseline_note" in data


def test_cli_stage_alone_writes_json(tmp_path, tiny_zoo):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--stage", "sam", "--weights", "tiny", "--images", "2", "--size",
                                      "64x48", "--batch-size", "2", "--warmup", "0", "--boxes", "4", "--threads", "1",
                                      "--baseline", "--set", "model=sam_vit_b", "--json", str(out), "--markdown"])
    assert result.exit_code == 0, result.output
    assert "ratio" in result.output and "sam_vit_b" in result.output and "| sam | sam_vit_b |" in result.output
    data = json.loads(out.read_text())
    assert data["stages"] == ["sam"] and data["batched"]["boxes_per_image"] == 4
    assert data["batched"]["stages"][0]["model"] == "sam_vit_b"
    assert data["baseline"]["images_per_s"] > 0 and data["speedup"] > 0


def test_cli_usage_errors(tiny_zoo):
    runner = CliRunner()
    bad_size = runner.invoke(app, ["bench", "--weights", "tiny", "--size", "big"])
    assert bad_size.exit_code == 2 and "WIDTHxHEIGHT" in bad_size.output
    bad_set = runner.invoke(app, ["bench", "--weights", "tiny", "--set", "sam.nope=1"])
    assert bad_set.exit_code == 2 and "sam.nope" in bad_set.output


def test_overrides_rebuild_pipeline_stages(tiny_zoo):
    from ram_grounded.bench import build_stages

    name, stages, _ = build_stages("ram_grounded_sam", None, {"sam.model": "sam_vit_b", "ram.model": "ram"}, "cpu")
    assert name == "ram_grounded_sam"
    assert stages[-1].model == "sam_vit_b" and stages[0].model == "ram"
    with pytest.raises(ConfigError):
        build_stages("ram_grounded_sam", "sam", {}, "cpu")


def test_workload_shaping_keeps_best_and_pads():
    import supervision as sv

    image = np.zeros((40, 60, 3), np.uint8)
    rec = Record(image=image, tags=[Tag("b", 0.2), Tag("a", 0.9), Tag("c", 0.5)], prompt=["a", "c"])
    rec.detections = sv.Detections(xyxy=np.array([[0, 0, 5, 5], [1, 1, 9, 9]], np.float32),
                                   confidence=np.array([0.3, 0.8], np.float32), class_id=np.array([0, 1]))
    ShapeTags(count=2)([rec])
    assert [t.name for t in rec.tags] == ["a", "c"]
    ShapeBoxes(count=5)([rec])
    det = rec.detections
    assert len(det) == 5 and det.xyxy[0].tolist() == [1, 1, 9, 9]  # most confident first
    assert (det.xyxy[:, 2] <= 60).all() and (det.xyxy[:, 3] <= 40).all() and (det.xyxy[:, :2] >= 0).all()
    assert list(det.data["class_name"][:2]) == ["c", "a"]
    ShapeTags(count=6)([rec])
    assert len(rec.tags) == 6 and len({t.name for t in rec.tags}) == 6


def test_naive_sam_matches_batched_masks(tiny_zoo):
    from ram_grounded.stages.segmentation import SamSegmenter

    stage = SamSegmenter(model="sam_vit_b", device="cpu")
    stage.ensure_loaded()
    image = synthetic_images(1, 80, 60, seed=3)[0]
    boxes = np.array([[5, 5, 40, 30], [20, 10, 70, 55], [0, 0, 80, 60]], np.float32)
    import supervision as sv

    fast = stage([Record(image=image, detections=sv.Detections(xyxy=boxes.copy()))])[0].detections
    slow = naive_sam(stage, Record(image=image, detections=sv.Detections(xyxy=boxes.copy()))).detections
    assert slow.mask.shape == fast.mask.shape == (3, 60, 80)
    assert (slow.mask == fast.mask).mean() > 0.99
    np.testing.assert_allclose(slow.data["mask_score"], fast.data["mask_score"], atol=1e-4)


def test_random_weights_swaps_loader_and_restores(monkeypatch):
    from ram_grounded.models import random_full

    built = []
    monkeypatch.setattr(random_full, "build_random_full", lambda card, seed=0: built.append(card.name) or object())
    original = zoo.load_model
    with random_weights():
        first = zoo.load_model("sam_vit_b", arch="sam")
        assert zoo.load_model("sam_vit_b") is first and built == ["sam_vit_b"]  # built once
        with pytest.raises(ConfigError):
            zoo.load_model("sam_vit_b", arch="groundingdino")
    assert zoo.load_model is original


def test_bert_sized_vocab_ids():
    from ram_grounded.models.random_full import BERT_FIXED_IDS, BERT_VOCAB_SIZE, bert_sized_tokenizer

    tok = bert_sized_tokenizer()
    assert len(tok) == BERT_VOCAB_SIZE
    for token, idx in BERT_FIXED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == idx
    ids = tok("cat . dog . traffic light .")["input_ids"]
    # [CLS] cat . dog . traffic light . [SEP]: one token per word, none unknown
    assert len(ids) == 9 and ids[0] == 101 and ids[-1] == 102 and ids.count(1012) == 3 and 100 not in ids


def test_rss_sampler_sees_an_allocation():
    with RssSampler(interval=0.001) as sampler:
        with sampler.window() as mem:
            block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
            block.sum()
        del block
    assert mem["extra_mb"] > 40 and mem["peak_mb"] > mem["extra_mb"]
