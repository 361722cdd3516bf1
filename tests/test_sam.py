"""SAM predictors and the ``sam`` stage on tiny random-weight models (both backends)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
import torch

from ram_grounded.errors import ConfigError, WeightsError, WrongCheckpointError
from ram_grounded.models.sam import build_tiny, load_hub, load_official, load_path
from ram_grounded.record import Record
from ram_grounded.stages.segmentation import SamSegmenter

ARCHS = ["sam", "sam-hf", "sam-hq-hf"]


def _card(arch: str, name: str = "test", **extra) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, arch=arch, revision=None, filename=None, extra=extra)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box they lose 10-50x to spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHS)
def predictor(request):
    return build_tiny(_card(request.param), seed=0)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _boxes(h: int, w: int, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n, 2, 2)) * np.array([w, h])
    return np.concatenate([xy.min(1), xy.max(1) + 2], axis=1).astype(np.float32)


@pytest.mark.parametrize("multimask", [False, True])
def test_batched_masks_equal_one_box_at_a_time(predictor, multimask):
    image, boxes = _image(90, 130), _boxes(90, 130, 5)
    masks, scores = predictor.segment_boxes(image, boxes, multimask=multimask, chunk_size=2)  # 3 chunks
    assert masks.shape == (5, 90, 130) and masks.dtype == bool and scores.shape == (5,)
    assert masks.any() and not masks.all()  # the tiny model gives real, non-constant masks
    for i, box in enumerate(boxes):
        one_mask, one_score = predictor.segment_boxes(image, box[None], multimask=multimask)
        np.testing.assert_array_equal(one_mask[0], masks[i])
        np.testing.assert_allclose(one_score[0], scores[i], rtol=1e-5, atol=1e-6)


def test_several_images_in_one_encoder_batch_equal_one_at_a_time(predictor):
    sizes = [(40, 70), (66, 30), (25, 25), (50, 50)]
    images = [_image(h, w, seed=h + w) for h, w in sizes]
    boxes = [_boxes(h, w, n, seed=n) for (h, w), n in zip(sizes, [3, 1, 0, 2])]  # one image has none
    batched = predictor.segment_batch(images, boxes, chunk_size=2, image_batch_size=3)  # groups 3 + 0
    assert len(batched) == 4
    for image, b, (masks, scores) in zip(images, boxes, batched):
        one_masks, one_scores = predictor.segment_boxes(image, b)
        assert masks.shape == (len(b), *image.shape[:2])
        np.testing.assert_array_equal(masks, one_masks)
        np.testing.assert_allclose(scores, one_scores, rtol=1e-4, atol=1e-5)


def test_masks_follow_the_box(predictor):
    image = _image(80, 120)
    boxes = np.array([[0, 0, 40, 30], [70, 40, 120, 80]], dtype=np.float32)
    masks, _ = predictor.segment_boxes(image, boxes)
    assert not np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("size", [(64, 64), (37, 100), (300, 200)])
def test_masks_at_original_size_match_the_reference_predictor(predictor, size):
    """Our batched path equals each package's own one-box predictor at the original size."""
    h, w = size
    image, boxes = _image(h, w, seed=h), _boxes(h, w, 2, seed=w)
    masks, scores = predictor.segment_boxes(image, boxes)
    assert masks.shape == (2, h, w) and masks.dtype == bool
    for i, box in enumerate(boxes):
        ref_logits, ref_score = _reference(predictor, image, box)
        assert ref_logits.shape == (h, w)
        # equal wherever the reference is not within float noise of SAM's threshold (0.0)
        agree = (masks[i] == (ref_logits > 0)) | (np.abs(ref_logits) < 1e-4)
        assert agree.all(), f"{(~agree).sum()} pixels differ"
        np.testing.assert_allclose(scores[i], ref_score, rtol=1e-5, atol=1e-6)


def _reference(predictor, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
    """Mask logits and IoU of one box: segment-anything's SamPredictor, or transformers' processor."""
    if predictor.backend == "segment_anything":
        from segment_anything import SamPredictor

        ref = SamPredictor(predictor.sam)
        ref.set_image(image)
        mask, score, _ = ref.predict(box=box, multimask_output=False, return_logits=True)
        return mask[0], float(score[0])
    from transformers import SamProcessor

    processor = SamProcessor(image_processor=predictor.image_processor)
    inputs = processor(images=image, input_boxes=[[box.tolist()]], return_tensors="pt")
    with torch.no_grad():
        out = predictor.model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
        )
    mask = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )[0]
    return mask[0, 0].numpy(), float(out.iou_scores[0, 0, 0])


def test_zero_boxes(predictor):
    masks, scores = predictor.segment_boxes(_image(50, 70), np.zeros((0, 4), dtype=np.float32))
    assert masks.shape == (0, 50, 70) and masks.dtype == bool and scores.shape == (0,)


def test_bad_inputs_are_config_errors(predictor):
    with pytest.raises(ConfigError):
        predictor.segment_boxes(_image(20, 20)[..., 0], np.zeros((1, 4)))
    with pytest.raises(ConfigError):
        predictor.segment_boxes(_image(20, 20), np.zeros((2, 3)))


def test_tiny_models_are_seeded():
    for arch in ARCHS:
        a, b, c = (build_tiny(_card(arch), seed=s) for s in (0, 0, 1))
        sa, sb, sc = (m.state_dict() for m in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# ------------------------------------------------------------------ loading
def _save_tiny_official(tmp_path: Path, name: str = "tiny_sam.pth"):
    tiny = build_tiny(_card("sam"), seed=3)
    path = tmp_path / name
    torch.save(tiny.sam.state_dict(), path)
    return tiny, path


def test_official_round_trip(tmp_path):
    tiny, path = _save_tiny_official(tmp_path)
    loaded = load_official(_card("sam", variant="tiny"), path)
    image, boxes = _image(40, 60), _boxes(40, 60, 3)
    for a, b in zip(tiny.segment_boxes(image, boxes), loaded.segment_boxes(image, boxes)):
        np.testing.assert_array_equal(a, b)
    assert loaded.model_id == "test"


def test_official_wrong_variant_fails_clearly(tmp_path):
    _, path = _save_tiny_official(tmp_path)
    with pytest.raises(WrongCheckpointError, match="vit_b was asked for"):
        load_official(_card("sam", name="sam_vit_b", variant="vit_b"), path)


def test_official_refuses_another_models_file(tmp_path):
    hf = build_tiny(_card("sam-hf"), seed=0)
    path = tmp_path / "not_official.pth"
    torch.save(hf.model.state_dict(), path)
    with pytest.raises(WrongCheckpointError, match="not a segment-anything SAM checkpoint"):
        load_official(_card("sam", variant="vit_h"), path)
    # SAM weights plus extra decoder keys (what a SAM-HQ file looks like): strict loading refuses
    state = build_tiny(_card("sam"), seed=0).sam.state_dict()
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 32)
    torch.save(state, path)
    with pytest.raises(WrongCheckpointError, match="1 unexpected.*SAM-HQ"):
        load_official(_card("sam", variant="tiny"), path)


def test_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        load_official(_card("sam", variant="vit_b"), path)
    assert not marker.exists()


@pytest.mark.parametrize("arch", ["sam-hf", "sam-hq-hf"])
def test_hub_format_round_trip_and_wrong_model(tmp_path, arch):
    tiny = build_tiny(_card(arch), seed=2)
    tiny.model.save_pretrained(tmp_path)
    tiny.image_processor.save_pretrained(tmp_path)
    loaded = load_hub(_card(arch), str(tmp_path))
    image, boxes = _image(50, 30), _boxes(50, 30, 3)
    for a, b in zip(tiny.segment_boxes(image, boxes), loaded.segment_boxes(image, boxes)):
        np.testing.assert_array_equal(a, b)
    other = "sam-hq-hf" if arch == "sam-hf" else "sam-hf"
    with pytest.raises(WrongCheckpointError):
        load_hub(_card(other), str(tmp_path))


# -------------------------------------------------------------------- stage
def _records() -> list[Record]:
    boxes = np.array([[2, 3, 30, 40], [20, 10, 60, 45]], dtype=np.float32)
    full = sv.Detections(xyxy=boxes, confidence=np.array([0.9, 0.4], dtype=np.float32), class_id=np.array([0, 1]))
    return [
        Record(image=_image(50, 70), source="a", prompt=["cat", "dog"], detections=full),
        Record(image=_image(33, 21), source="b", prompt=["cat"]),  # no detections
    ]


@pytest.mark.parametrize("model", ["sam_vit_b", "sam-vit-base", "sam-hq-vit-base"])
def test_stage_writes_masks_and_separate_scores(monkeypatch, model):
    monkeypatch.setenv("RAM_GROUNDED_ZOO", "tiny")
    stage = SamSegmenter(model=model, device="cpu", chunk_size=1)
    a, b = stage(_records())
    assert a.detections.mask.shape == (2, 50, 70) and a.detections.mask.dtype == bool
    np.testing.assert_array_equal(a.detections.confidence, np.float32([0.9, 0.4]))  # detection score untouched
    expected_masks, expected_scores = stage._predictor.segment_boxes(a.image, a.detections.xyxy)
    np.testing.assert_array_equal(a.detections.mask, expected_masks)
    np.testing.assert_allclose(a.detections.data["mask_score"], expected_scores, rtol=1e-5)
    assert b.detections.mask.shape == (0, 33, 21) and len(b.detections.data["mask_score"]) == 0
    assert a.meta["sam"]["model"].endswith(model) and a.meta["sam"]["multimask"] is False


def test_stage_backend_switches_to_the_twin_weights():
    assert SamSegmenter(model="sam_vit_h", backend="transformers").resolve() == ("sam-vit-huge", "sam-hf")
    assert SamSegmenter(model="sam-vit-base", backend="segment_anything").resolve() == ("sam_vit_b", "sam")
    assert SamSegmenter(model="sam-hq-vit-large").resolve() == ("sam-hq-vit-large", "sam-hq-hf")
    with pytest.raises(ConfigError, match="no segment_anything version"):
        SamSegmenter(model="sam-hq-vit-base", backend="segment_anything").resolve()
    with pytest.raises(ConfigError, match="unknown backend"):
        SamSegmenter(backend="onnx")
    with pytest.raises(ConfigError, match="neither a zoo name"):
        SamSegmenter(model="/nonexistent/sam.pth").resolve()


def test_stage_loads_a_local_official_file(tmp_path, monkeypatch):
    monkeypatch.delenv("RAM_GROUNDED_ZOO", raising=False)
    tiny, path = _save_tiny_official(tmp_path, "my_renamed_sam.pth")  # variant read from the weights
    stage = SamSegmenter(model=str(path), device="cpu")
    (a, _) = stage(_records())
    expected, _ = tiny.segment_boxes(a.image, a.detections.xyxy)
    np.testing.assert_array_equal(a.detections.mask, expected)
    assert isinstance(load_path(path, "sam"), type(tiny))


def test_stage_runs_in_a_pipeline_and_round_trips_yaml(monkeypatch):
    from ram_grounded.pipeline import Pipeline
    from ram_grounded.registry import get_stage

    monkeypatch.setenv("RAM_GROUNDED_ZOO", "tiny")
    assert get_stage("sam") is SamSegmenter
    pipe = Pipeline([SamSegmenter(model="sam-vit-base", multimask=True, device="cpu")], inputs=["detections"])
    again = Pipeline.from_yaml(pipe.to_yaml())
    assert again.stages[0].params() == pipe.stages[0].params()
    record = _records()[0]
    out = again(record)
    assert out.error is None, out.error
    assert out.detections.mask.shape == (2, 50, 70) and out.meta["sam"]["multimask"] is True
    with pytest.raises(ConfigError, match="reads 'detections'"):
        Pipeline([SamSegmenter()])
