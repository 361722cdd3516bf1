"""CVAT serverless detector (nuclio): base64 image in, CVAT shapes out.

Request body (what CVAT sends to a ``detector``)::

    {"image": "<base64 JPEG/PNG>", "threshold": 0.5,        # threshold optional
     "labels": ["cat", "dog"]}                              # optional: classes to ground

Answer: a JSON list of shapes, one per detection::

    {"label": "cat", "confidence": "0.87", "type": "rectangle", "points": [x1, y1, x2, y2]}
    {"label": "cat", "confidence": "0.87", "type": "mask", "points": [polygon x, y, ...],
     "mask": [0/1 per pixel of the box crop, row-major] + [xtl, ytl, xbr, ybr]}

The pipeline is ``$RAM_GROUNDED_PIPELINE`` (default ``ram_grounded_sam``) on
``$RAM_GROUNDED_DEVICE`` (default ``auto``), loaded once in :func:`init_context`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

import numpy as np

from ram_grounded.errors import RamGroundedError
from ram_grounded.pipeline import Pipeline
from ram_grounded.record import Record
from ram_grounded.serve.backend import pipeline_for_classes

#: The largest request image accepted (decoded pixels), as for the server.
MAX_PIXELS = 8192 * 8192


def init_context(context: Any, pipeline: Pipeline | None = None) -> None:
    """Load the pipeline once per nuclio worker (``pipeline`` is for tests)."""
    if pipeline is None:
        from ram_grounded.pipeline_yaml import load_pipeline

        pipeline = load_pipeline(os.environ.get("RAM_GROUNDED_PIPELINE", "ram_grounded_sam"),
                                 device=os.environ.get("RAM_GROUNDED_DEVICE", "auto"))
        for stage in pipeline.stages:  # load weights now, not in the first request's time budget
            if hasattr(stage, "ensure_loaded"):
                stage.ensure_loaded()
    context.user_data.pipeline = pipeline
    context.user_data.variants = {}


def handler(context: Any, event: Any) -> Any:
    """Answer one CVAT detector call."""
    try:
        body = event.body
        if isinstance(body, (bytes, str)):
            body = json.loads(body)
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            return _error(context, 400, "the body needs a base64 'image' string")
        try:
            data = base64.b64decode(body["image"], validate=True)
        except (binascii.Error, ValueError):
            return _error(context, 400, "'image' is not valid base64")
        threshold = float(body.get("threshold") or 0.0)
        classes = [str(c) for c in body.get("labels") or [] if str(c).strip()]
        record = _run(context, data, classes)
        if record.error:
            return _error(context, 422, record.error)
        shapes = record_to_shapes(record, threshold)
    except (ValueError, TypeError) as exc:
        return _error(context, 400, f"bad request: {exc}")
    except RamGroundedError as exc:
        return _error(context, 500, str(exc))
    context.logger.info(f"{len(shapes)} shapes")
    return context.Response(body=json.dumps(shapes), headers={}, content_type="application/json", status_code=200)


def _run(context: Any, data: bytes, classes: list[str]) -> Record:
    from ram_grounded.io import load_image

    pipe: Pipeline = context.user_data.pipeline
    if classes:
        key = tuple(classes)
        variants = context.user_data.variants
        if key not in variants:
            variants[key] = pipeline_for_classes(pipe, classes, only=True)
        pipe = variants[key]
    record = Record(source="cvat")
    try:
        record.image = load_image(data, max_pixels=MAX_PIXELS)
    except RamGroundedError as exc:
        record.error = str(exc)
        return record
    if classes and pipe is context.user_data.pipeline and "prompt" in pipe.inputs:
        record.prompt = list(classes)
    return pipe(record)


def _class_names(record: Record) -> list[str]:
    det = record.detections
    if "class_name" in det.data:
        return [str(n) for n in det.data["class_name"]]
    if det.class_id is not None:
        return [record.prompt[i] if 0 <= i < len(record.prompt) else "object" for i in det.class_id.tolist()]
    return ["object"] * len(det)


def record_to_shapes(record: Record, threshold: float = 0.0) -> list[dict[str, Any]]:
    """CVAT detector shapes for a record's detections at or above ``threshold``."""
    det = record.detections
    names = _class_names(record)
    conf = det.confidence if det.confidence is not None else np.ones(len(det), dtype=np.float32)
    h, w = record.size or (0, 0)
    shapes = []
    for i in range(len(det)):
        if float(conf[i]) < threshold:
            continue
        shape: dict[str, Any] = {"label": names[i], "confidence": f"{float(conf[i]):.4f}"}
        mask = det.mask[i] if det.mask is not None else None
        if mask is not None and mask.any():
            polygon = mask_polygon(mask)
            ys, xs = np.nonzero(mask)
            xtl, ytl, xbr, ybr = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
            crop = mask[ytl:ybr + 1, xtl:xbr + 1].astype(np.uint8).ravel().tolist()
            shape.update(type="mask", points=polygon, mask=crop + [xtl, ytl, xbr, ybr])
        else:
            x1, y1, x2, y2 = (float(v) for v in det.xyxy[i])
            shape.update(type="rectangle", points=[max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)])
        shapes.append(shape)
    return shapes


def mask_polygon(mask: np.ndarray) -> list[float]:
    """Outer contour of the mask's largest part as a flat ``[x, y, ...]`` list."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    return [float(v) for v in largest.reshape(-1, 2).ravel()]


def _error(context: Any, status: int, message: str) -> Any:
    return context.Response(body=json.dumps({"error": message}), headers={}, content_type="application/json",
                            status_code=status)


def detector_spec() -> list[dict[str, Any]]:
    """The labels function.yaml lists: RAM's tag list (what the pipeline can ground), as masks."""
    from importlib import resources

    text = (resources.files("ram_grounded") / "data" / "recognize_anything" / "ram_tag_list.txt").read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return [{"id": i, "name": name, "type": "mask"} for i, name in enumerate(names)]
