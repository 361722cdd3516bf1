"""Record: one image and everything the stages learned about it.

A stage reads some fields of a batch of records and writes others; nothing else passes
between stages. ``to_dict`` / ``from_dict`` round-trip everything but the pixels, with
masks as COCO RLE (pycocotools), so a run's JSON output can be read back losslessly.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import supervision as sv
from pycocotools import mask as mask_utils

#: The fields a stage may name in ``reads`` / ``writes``.
RECORD_FIELDS = frozenset(
    {"image", "source", "tags", "caption", "prompt", "detections", "checks", "meta", "error"}
)


@dataclass
class Tag:
    """One recognised tag: English name, probability, and names in other languages."""

    name: str
    score: float
    translations: dict[str, str] = field(default_factory=dict)


@dataclass
class Record:
    """One image and what is known about it (see DESIGN.md for every field's meaning)."""

    image: np.ndarray | None = None
    source: str | None = None
    tags: list[Tag] = field(default_factory=list)
    caption: str | None = None
    prompt: list[str] = field(default_factory=list)
    detections: sv.Detections = field(default_factory=sv.Detections.empty)
    checks: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True while no stage or loader has failed on this record."""
        return self.error is None

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of the image, or the stored size when pixels were dropped."""
        if self.image is not None:
            return int(self.image.shape[0]), int(self.image.shape[1])
        hw = self.meta.get("image_size")
        return (int(hw[0]), int(hw[1])) if hw else None

    def plot(self, **kwargs: Any) -> np.ndarray:
        """The image with masks, boxes, labels, tags and caption drawn (see ``visualize.plot_record``)."""
        from .visualize import plot_record

        return plot_record(self, **kwargs)

    def _repr_png_(self) -> bytes | None:
        if self.image is None:
            return None
        from .visualize import png_bytes

        return png_bytes(self.plot(header=False))

    def _repr_html_(self) -> str:
        from .visualize import record_html

        return record_html(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the pixels (masks as COCO RLE)."""
        size = self.size
        meta = dict(self.meta)
        if size is not None:
            meta["image_size"] = list(size)
        return {
            "source": self.source,
            "tags": [
                {"name": t.name, "score": float(t.score), "translations": dict(t.translations)}
                for t in self.tags
            ],
            "caption": self.caption,
            "prompt": list(self.prompt),
            "detections": detections_to_dict(self.detections),
            "checks": _jsonable(self.checks),
            "meta": _jsonable(meta),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], image: np.ndarray | None = None) -> Record:
        """Inverse of :meth:`to_dict`; pass ``image`` to re-attach the pixels."""
        return cls(
            image=image,
            source=data.get("source"),
            tags=[Tag(t["name"], float(t["score"]), dict(t.get("translations", {})))
                  for t in data.get("tags", [])],
            caption=data.get("caption"),
            prompt=list(data.get("prompt", [])),
            detections=detections_from_dict(data.get("detections")),
            checks=dict(data.get("checks", {})),
            meta=dict(data.get("meta", {})),
            error=data.get("error"),
        )


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Bool HxW mask -> COCO RLE with a str ``counts`` (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` str or bytes) -> bool HxW mask."""
    counts = rle["counts"]
    coded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coded).astype(bool)


def detections_to_dict(det: sv.Detections) -> dict[str, Any]:
    """supervision.Detections -> JSON-ready dict; float32 values survive exactly."""
    n = len(det)
    out: dict[str, Any] = {"xyxy": det.xyxy.astype(np.float32).tolist() if n else []}
    if det.confidence is not None:
        out["confidence"] = det.confidence.astype(np.float32).tolist()
    if det.class_id is not None:
        out["class_id"] = det.class_id.astype(int).tolist()
    if det.mask is not None:
        out["mask"] = [mask_to_rle(m) for m in det.mask]
        out["mask_shape"] = list(det.mask.shape)
    if det.tracker_id is not None:
        out["tracker_id"] = det.tracker_id.astype(int).tolist()
    out["data"] = {key: _array_to_json(np.asarray(value)) for key, value in det.data.items()}
    return out


def detections_from_dict(data: dict[str, Any] | None) -> sv.Detections:
    """Inverse of :func:`detections_to_dict`."""
    if not data or not data.get("xyxy"):
        empty = sv.Detections.empty()
        if data and data.get("mask_shape"):
            empty.mask = np.zeros(data["mask_shape"], dtype=bool)
        return empty
    xyxy = np.asarray(data["xyxy"], dtype=np.float32).reshape(-1, 4)
    mask = None
    if "mask" in data:
        mask = np.stack([rle_to_mask(r) for r in data["mask"]]) if data["mask"] else None
    return sv.Detections(
        xyxy=xyxy,
        confidence=np.asarray(data["confidence"], dtype=np.float32) if "confidence" in data else None,
        class_id=np.asarray(data["class_id"], dtype=int) if "class_id" in data else None,
        mask=mask,
        tracker_id=np.asarray(data["tracker_id"], dtype=int) if "tracker_id" in data else None,
        data={key: _array_from_json(value) for key, value in data.get("data", {}).items()},
    )


def _array_to_json(arr: np.ndarray) -> dict[str, Any]:
    if arr.dtype.kind in "OUS":
        return {"dtype": "str", "values": [str(v) for v in arr.tolist()]}
    if arr.dtype.kind == "b":
        return {"dtype": "bool", "values": arr.tolist()}
    # float64 would survive tolist() exactly too; keep the dtype so the round trip is exact
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "values": arr.tolist()}


def _array_from_json(value: dict[str, Any]) -> np.ndarray:
    if value["dtype"] == "str":
        return np.asarray(value["values"], dtype=object) if value["values"] else np.zeros(0, dtype=object)
    arr = np.asarray(value["values"], dtype=value["dtype"])
    return arr.reshape(value["shape"]) if "shape" in value else arr


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy of nested meta/checks (numpy scalars and arrays become Python values)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in (sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj)]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)  # Path, enums, ...: their text
