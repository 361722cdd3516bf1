"""Vision-language stages (itm, git_caption, git_vqa, zeroshot_classify) on tiny random models.

Expected values are never hard-coded: each score is compared with an independent
computation (transformers' own forward, teacher forcing) or with the same records run
one by one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import supervision as sv
import torch

from ram_grounded import zoo
from ram_grounded.errors import ConfigError
from ram_grounded.models.hf import HfBundle, build_tiny
from ram_grounded.pipeline import Pipeline
from ram_grounded.record import Record
from ram_grounded.registry import available_stages, get_stage
from ram_grounded.stages.git import GitCaptioner, GitVqa
from ram_grounded.stages.matching import ItmChecker, crop_box
from ram_grounded.stages.zeroshot import ZeroShotClassifier

TOL = 1e-5


@pytest.fixture(autouse=True)
def _tiny_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAM_GROUNDED_ZOO", "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _records(n: int = 3, seed: int = 0) -> list[Record]:
    """Images of different sizes, each with a caption, a prompt and 0..n boxes (one degenerate)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = 40 + 13 * i, 64 - 7 * i
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        k = i + 1 if i < n - 1 else 0  # the last record has no boxes
        x0 = rng.uniform(-5, w / 2, k)
        y0 = rng.uniform(-5, h / 2, k)
        xyxy = np.stack([x0, y0, x0 + rng.uniform(1, w, k), y0 + rng.uniform(1, h, k)], 1).astype(np.float32)
        if k:
            xyxy[-1] = [3.2, 4.7, 3.2, 4.7]  # zero-area box: still one pixel
        det = sv.Detections(xyxy=xyxy.reshape(-1, 4), confidence=rng.uniform(0.3, 1, k).astype(np.float32),
                            class_id=np.arange(k) % 2) if k else sv.Detections.empty()
        records.append(Record(image=image, source=f"img{i}", caption=["a dog on a sofa", "two cats", "a red rocket"][i % 3],
                              prompt=["dog", "sofa"], detections=det))
    return records


def _one_by_one(stage, records: list[Record]) -> list[Record]:
    return [stage([r])[0] for r in copy.deepcopy(records)]


# ------------------------------------------------------------------ registry, bundles
def test_registry_lists_the_vl_stages() -> None:
    names = available_stages()
    for name, cls in [("itm", ItmChecker), ("git_caption", GitCaptioner), ("git_vqa", GitVqa),
                      ("zeroshot_classify", ZeroShotClassifier)]:
        assert name in names
        assert get_stage(name) is cls


@pytest.mark.parametrize("card_name", ["blip-itm-base-coco", "git-base-coco", "clip-vit-base-patch16"])
def test_tiny_bundles_are_seeded_and_offline(card_name: str) -> None:
    card = zoo.get_card(card_name)
    a, b, c = build_tiny(card, 0), build_tiny(card, 0), build_tiny(card, 1)
    assert isinstance(a, HfBundle) and a.tiny and not a.model.training
    pa, pb, pc = (torch.cat([p.flatten() for p in m.model.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    ids = [a.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("cat", "dog", "person")]
    assert len({tuple(i) for i in ids}) == 3 and a.tokenizer.unk_token_id not in sum(ids, [])
    assert zoo.load_model(card_name, device="cpu").model.config.model_type == a.model.config.model_type


def test_crop_box_clips_and_keeps_a_pixel() -> None:
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert crop_box(image, [-5, -5, 100, 100]).shape == (10, 20, 3)
    assert crop_box(image, [2.5, 1.2, 4.1, 3.0]).shape == (2, 3, 3)  # rounded outwards: x 2..5, y 1..3
    np.testing.assert_array_equal(crop_box(image, [2.5, 1.2, 4.1, 3.0]), image[1:3, 2:5])
    assert crop_box(image, [7, 7, 7, 7]).shape == (1, 1, 3)
    assert crop_box(image, [30, 30, 40, 40]).shape == (1, 1, 3)  # outside: the nearest edge pixel


# ------------------------------------------------------------------------------- itm
def test_itm_scores_equal_transformers_forward() -> None:
    stage = ItmChecker(use_itc=True, device="cpu")
    stage.ensure_loaded()
    bundle = stage._bundle
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (30 + 5 * i, 40, 3), dtype=np.uint8) for i in range(3)]
    texts = ["a dog", "two cats on a sofa", "rocket"]
    itm, itc = stage.score_pairs(images, texts)
    inputs = bundle.processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref_itm = bundle.model(**inputs, use_itm_head=True).itm_score.softmax(-1)[:, 1]
        ref_itc = torch.diagonal(bundle.model(**inputs, use_itm_head=False).itm_score)
    np.testing.assert_allclose(itm, ref_itm.numpy(), atol=TOL)
    np.testing.assert_allclose(itc, ref_itc.numpy(), atol=TOL)


@pytest.mark.parametrize("max_pairs", [0, 2])
def test_itm_batched_equals_one_by_one(max_pairs: int) -> None:
    records = _records()
    stage = ItmChecker(use_itc=True, filter="flag", max_pairs=max_pairs, device="cpu")
    singles = _one_by_one(stage, records)
    stage(records)
    for batched, single in zip(records, singles):
        for key in ("caption_itm", "caption_itc"):
            assert abs(batched.checks[key] - single.checks[key]) <= TOL
        assert len(batched.detections) == len(single.detections)
        for key in ("itm_score", "itc_score"):
            assert batched.detections.data[key].shape == (len(batched.detections),)
            np.testing.assert_allclose(batched.detections.data[key], single.detections.data[key], atol=TOL)
        np.testing.assert_array_equal(batched.detections.data["itm_pass"],
                                      batched.detections.data["itm_score"] >= stage.box_threshold)
        assert batched.meta["itm"]["model"] == "blip-itm-base-coco"
        assert batched.meta["itm"]["box_threshold"] == stage.box_threshold


def test_itm_mismatched_caption_is_written_and_flagged_not_dropped() -> None:
    record = _records(1)[0]
    record.caption = "a plate of spaghetti on the moon"
    # no probability reaches 1.0, so the caption fails the check for certain
    ItmChecker(filter="drop", caption_threshold=1.0, score_boxes=False, device="cpu")([record])
    assert record.caption == "a plate of spaghetti on the moon"
    assert 0.0 <= record.checks["caption_itm"] < 1.0
    assert record.checks["caption_itm_pass"] is False
    assert record.meta["itm"]["caption_flagged"] is True and record.meta["itm"]["caption_threshold"] == 1.0


def test_itm_drop_counts_every_removed_box() -> None:
    records = _records(3, seed=5)
    scored = ItmChecker(filter="none", score_caption=False, device="cpu")(copy.deepcopy(records))
    scores = np.concatenate([r.detections.data["itm_score"] for r in scored])
    threshold = float(np.median(scores))
    stage = ItmChecker(filter="drop", score_caption=False, box_threshold=threshold, device="cpu")
    stage(records)
    total_dropped = 0
    for before, after in zip(scored, records):
        info = after.meta["itm"]
        expected = before.detections.data["itm_score"] < threshold
        assert info["dropped_boxes"] == int(expected.sum()) == len(info["dropped"])
        assert len(after.detections) + info["dropped_boxes"] == len(before.detections)
        assert np.all(after.detections.data["itm_score"] >= threshold)
        names = [before.prompt[c] for c in before.detections.class_id[expected]] if len(before.detections) else []
        assert [d["class_name"] for d in info["dropped"]] == names
        total_dropped += info["dropped_boxes"]
        assert "caption_itm" not in after.checks
    assert total_dropped >= 1


def test_itm_reads_follow_what_it_scores_and_bad_params_fail() -> None:
    assert ItmChecker(score_boxes=False).reads == {"image", "caption"}
    assert ItmChecker(score_caption=False).reads == {"image", "detections"}
    with pytest.raises(ConfigError, match="caption"):
        Pipeline([ItmChecker(score_boxes=False)])
    for bad in ({"filter": "remove"}, {"box_threshold": 1.5}, {"text_template": "a photo"}):
        with pytest.raises(ConfigError):
            ItmChecker(**bad)


# ------------------------------------------------------------------------------- git
def _teacher_forced_logprob(bundle: HfBundle, image: np.ndarray, prefix: list[int], new: list[int]) -> float:
    """Mean log-prob of ``new`` after ``prefix`` by one forward over the whole sequence."""
    ids = torch.tensor([prefix + new])
    pixel_values = bundle.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        logits = bundle.model(input_ids=ids, pixel_values=pixel_values).logits[0]
    n_image = bundle.model.git.encoder.layer[0].attention.self.image_patch_tokens
    logp = logits.log_softmax(-1)
    steps = [float(logp[n_image + len(prefix) + j - 1, tok]) for j, tok in enumerate(new)]
    return float(np.mean(steps))


def test_git_caption_batched_equals_one_by_one_and_scores_are_exact() -> None:
    records = _records()
    records[0].caption = None
    stage = GitCaptioner(max_new_tokens=6, device="cpu")
    singles = _one_by_one(stage, records)
    stage(records)
    tokenizer = stage._bundle.tokenizer
    for batched, single in zip(records, singles):
        assert isinstance(batched.caption, str) and batched.caption == single.caption
        assert abs(batched.checks["caption_logprob"] - single.checks["caption_logprob"]) <= TOL
        assert batched.meta["git_caption"]["model"] == "git-base-coco"
    assert "previous_caption" not in records[0].meta["git_caption"]
    assert records[1].meta["git_caption"]["previous_caption"] == "two cats"
    # the score is the mean log-prob of the generated tokens up to EOS (teacher forcing agrees)
    out = stage._bundle.model.generate(
        pixel_values=stage._bundle.image_processor(images=[records[0].image], return_tensors="pt")["pixel_values"],
        max_new_tokens=6, do_sample=False)
    new = out[0, 1:].tolist()
    if tokenizer.sep_token_id in new:
        new = new[: new.index(tokenizer.sep_token_id) + 1]
    expected = _teacher_forced_logprob(stage._bundle, records[0].image, [tokenizer.cls_token_id], new)
    assert abs(records[0].checks["caption_logprob"] - expected) <= 1e-4


def test_git_vqa_question_from_record_or_config() -> None:
    records = _records(4)
    records[1].meta["question"] = "what color is the rocket?"
    records[3].meta["question"] = "what color is the rocket?"
    stage = GitVqa(max_new_tokens=5, answer_key="answer", device="cpu")
    singles = _one_by_one(stage, records)
    stage(records)
    for i, (batched, single) in enumerate(zip(records, singles)):
        result = batched.checks["answer"]
        want = "what color is the rocket?" if i in (1, 3) else stage.question
        assert result["question"] == want
        assert result["answer"] == single.checks["answer"]["answer"]
        assert abs(result["logprob"] - single.checks["answer"]["logprob"]) <= TOL
        assert batched.meta["git_vqa"]["model"] == "git-base-vqav2"
    tokenizer = stage._bundle.tokenizer
    prefix = [tokenizer.cls_token_id] + tokenizer(want, add_special_tokens=False)["input_ids"]
    out = stage._bundle.model.generate(
        pixel_values=stage._bundle.image_processor(images=[records[3].image], return_tensors="pt")["pixel_values"],
        input_ids=torch.tensor([prefix]), max_new_tokens=5, do_sample=False)
    answer = tokenizer.decode(out[0, len(prefix):], skip_special_tokens=True).strip()
    assert records[3].checks["answer"]["answer"] == answer


def test_git_vqa_without_question_reads_meta_and_fails_per_record() -> None:
    stage = GitVqa(question=None, max_new_tokens=3, device="cpu")
    assert "meta" in stage.reads
    with pytest.raises(ConfigError, match="meta"):
        Pipeline([stage])
    pipe = Pipeline([stage], inputs=["meta"])
    records = _records(2)
    records[0].meta["question"] = "is there a cat?"
    pipe.process_batch(records)
    assert records[0].error is None and records[0].checks["vqa"]["question"] == "is there a cat?"
    assert records[1].error is not None and "question" in records[1].error
    with pytest.raises(ConfigError):
        GitVqa(question="  ")


# ------------------------------------------------------------------------- zeroshot
CATEGORIES = ["cat", "dog", "person", "rocket"]


def test_zeroshot_equals_clip_forward_with_one_template() -> None:
    records = _records()
    stage = ZeroShotClassifier(categories=CATEGORIES, templates=["a photo of a {}."], device="cpu")
    stage(records)
    bundle = stage._bundle
    for record in records:
        if not len(record.detections):
            continue
        crops = [crop_box(record.image, b) for b in record.detections.xyxy]
        inputs = bundle.processor(text=[f"a photo of a {c}." for c in CATEGORIES], images=crops,
                                  return_tensors="pt", padding=True, input_data_format="channels_last")
        with torch.inference_mode():
            probs = bundle.model(**inputs).logits_per_image.softmax(-1)
        np.testing.assert_allclose(record.detections.data["zeroshot_score"], probs.max(-1).values.numpy(), atol=TOL)
        assert list(record.detections.data["zeroshot_class"]) == [CATEGORIES[i] for i in probs.argmax(-1)]


def test_zeroshot_batched_equals_one_by_one() -> None:
    records = _records(3, seed=2)
    stage = ZeroShotClassifier(categories=CATEGORIES, device="cpu")
    singles = _one_by_one(stage, records)
    stage(records)
    for batched, single in zip(records, singles):
        np.testing.assert_allclose(batched.detections.data["zeroshot_score"],
                                   single.detections.data["zeroshot_score"], atol=TOL)
        assert list(batched.detections.data["zeroshot_class"]) == list(single.detections.data["zeroshot_class"])
        assert batched.meta["zeroshot_classify"]["categories"] == CATEGORIES


def test_zeroshot_relabel_keeps_prompt_and_class_ids_consistent() -> None:
    records = _records(3, seed=4)
    scored = ZeroShotClassifier(categories=CATEGORIES, device="cpu")(copy.deepcopy(records))
    scores = np.concatenate([r.detections.data["zeroshot_score"] for r in scored])
    threshold = float(np.median(scores))
    stage = ZeroShotClassifier(categories=CATEGORIES, relabel=True, filter="flag", score_threshold=threshold,
                               device="cpu")
    stage(records)
    for before, after in zip(scored, records):
        det = after.detections
        assert after.prompt[: len(CATEGORIES)] == CATEGORIES
        old = [before.prompt[c] for c in before.detections.class_id] if len(det) else []
        passed = before.detections.data["zeroshot_score"] >= threshold
        for i in range(len(det)):
            assert after.prompt[det.class_id[i]] == det.data["class_name"][i]
            assert det.data["class_name_original"][i] == old[i]
            want = before.detections.data["zeroshot_class"][i] if passed[i] else old[i]
            assert det.data["class_name"][i] == want
        np.testing.assert_array_equal(det.data["zeroshot_pass"], passed)
        assert len(set(after.prompt)) == len(after.prompt)


def test_zeroshot_drop_and_image_target() -> None:
    records = _records(3, seed=6)
    scored = ZeroShotClassifier(categories=CATEGORIES, device="cpu")(copy.deepcopy(records))
    threshold = float(np.median(np.concatenate([r.detections.data["zeroshot_score"] for r in scored])))
    ZeroShotClassifier(categories=CATEGORIES, filter="drop", score_threshold=threshold, device="cpu")(records)
    for before, after in zip(scored, records):
        info = after.meta["zeroshot_classify"]
        assert len(after.detections) + info["dropped_boxes"] == len(before.detections)
        assert np.all(after.detections.data["zeroshot_score"] >= threshold)
    image_stage = ZeroShotClassifier(categories=CATEGORIES, target="image", filter="flag", score_threshold=0.2,
                                     result_key="scene", device="cpu")
    assert image_stage.reads == {"image"}
    image_stage(records)
    for record in records:
        result = record.checks["scene"]
        assert result["class"] in CATEGORIES and result["passed"] == (result["score"] >= 0.2)
    for bad in ({"categories": []}, {"categories": ["a", "a"]}, {"categories": ["a"], "templates": ["x"]},
                {"categories": ["a"], "target": "image", "relabel": True}, {"categories": ["a"], "filter": "x"}):
        with pytest.raises(ConfigError):
            ZeroShotClassifier(**bad)


def test_stages_move_and_reload_on_device_change() -> None:
    stage = ZeroShotClassifier(categories=CATEGORIES, device="cpu")
    stage([_records(1)[0]])
    assert stage._loaded and stage.to("cpu") is stage and stage._loaded
    stage.device = "auto"
    stage.to("cpu")
    assert not stage._loaded
    stage([_records(1)[0]])
    assert stage._bundle.device.type == "cpu"
