"""Record.to_dict / from_dict round-trip everything but the pixels, masks via COCO RLE."""

from __future__ import annotations

import json

import numpy as np
import supervision as sv

from ram_grounded.record import Record, Tag, rle_to_mask, mask_to_rle


def _record() -> Record:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 37, 53)) > 0.6
    det = sv.Detections(
        xyxy=rng.random((3, 4)).astype(np.float32) * 50,
        confidence=rng.random(3).astype(np.float32),
        class_id=np.array([0, 2, 1]),
        mask=masks,
        data={"class_name": np.array(["cat", "dog", "tree"]), "mask_score": rng.random(3).astype(np.float32)},
    )
    return Record(
        image=np.zeros((37, 53, 3), np.uint8), source="a/b.jpg",
        tags=[Tag("cat", 0.91234567, {"zh": "猫 "}), Tag("tree", 0.5)], caption="a cat under a tree",
        prompt=["cat", "tree", "dog"], detections=det, checks={"caption_itm": 0.25},
        meta={"timings": {"ram": 0.1}, "n": np.int64(3)},
    )


def test_round_trip_is_lossless_through_json():
    rec = _record()
    data = json.loads(json.dumps(rec.to_dict()))
    back = Record.from_dict(data)
    assert back.source == rec.source and back.caption == rec.caption and back.prompt == rec.prompt
    assert [(t.name, t.score, t.translations) for t in back.tags] == [(t.name, t.score, t.translations) for t in rec.tags]
    np.testing.assert_array_equal(back.detections.xyxy, rec.detections.xyxy)
    np.testing.assert_array_equal(back.detections.confidence, rec.detections.confidence)
    np.testing.assert_array_equal(back.detections.class_id, rec.detections.class_id)
    np.testing.assert_array_equal(back.detections.mask, rec.detections.mask)
    np.testing.assert_array_equal(back.detections.data["mask_score"], rec.detections.data["mask_score"])
    assert list(back.detections.data["class_name"]) == ["cat", "dog", "tree"]
    assert back.checks == {"caption_itm": 0.25}
    assert back.meta["image_size"] == [37, 53] and back.meta["n"] == 3
    assert back.size == (37, 53)
    # a second trip gives the same JSON
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(data, sort_keys=True)


def test_empty_detections_and_error_round_trip():
    rec = Record(source="x.png", error="ImageLoadError: truncated")
    back = Record.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert len(back.detections) == 0 and back.error == rec.error and back.tags == []


def test_rle_helpers_are_inverse():
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [5, 7]
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


def test_meta_values_of_any_type_become_json():
    from pathlib import Path

    rec = Record(source="x", meta={"paths": {Path("/a/b")}, "nan": float("nan"), "p": Path("/c")})
    data = json.loads(json.dumps(rec.to_dict(), allow_nan=False))
    assert data["meta"] == {"paths": ["/a/b"], "nan": None, "p": "/c"}
