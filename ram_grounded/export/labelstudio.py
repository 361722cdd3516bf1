"""Label Studio: ``labelstudio/tasks.json`` (tasks with predictions) + ``labelstudio/config.xml``.

Each task's prediction holds, per detection, a ``rectanglelabels`` result (x, y, width,
height in percent of the image) and, when masks exist, a ``brushlabels`` result with
Label Studio's brush RLE; the tags as ``choices`` and the caption as ``textarea``. The
labeling config beside it declares the same control names (``label``, ``mask``, ``tags``,
``caption`` on the image ``image``) and every class and tag that occurs.

``data.image`` is the source URL for http(s) sources, otherwise
``image_url_prefix + <absolute path without the leading />`` with the default prefix
``/data/local-files/?d=`` (serve them by starting Label Studio with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from ..io.http import looks_like_url
from .brush import mask_to_brush_rle
from .common import StoreDataset, detection_class_names

DEFAULT_URL_PREFIX = "/data/local-files/?d="


def export_labelstudio(dataset: StoreDataset, out_dir: Path, *,
                       image_url_prefix: str = DEFAULT_URL_PREFIX) -> Path:
    """Write ``tasks.json`` and ``config.xml`` into ``out_dir``; returns the tasks path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [_task(dataset, item, image_url_prefix) for item in dataset]
    path = out_dir / "tasks.json"
    path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    (out_dir / "config.xml").write_text(labeling_config(dataset.classes, dataset.tags,
                                                        masks=dataset.has_masks,
                                                        caption=dataset.has_captions), encoding="utf-8")
    return path


def image_url(source: str, prefix: str = DEFAULT_URL_PREFIX) -> str:
    """What Label Studio should load for ``source``."""
    if looks_like_url(source):
        return source
    return prefix + os.path.abspath(source).lstrip("/").replace(os.sep, "/")


def _task(dataset: StoreDataset, item: Any, prefix: str) -> dict[str, Any]:
    record = item.record(masks=dataset.has_masks)
    det = record.detections
    names = detection_class_names(record)
    w, h = item.width, item.height
    base = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
    results: list[dict[str, Any]] = []
    mask_scores = det.data.get("mask_score")
    for k in range(len(det)):
        x1, y1, x2, y2 = (float(v) for v in det.xyxy[k])
        score = float(det.confidence[k]) if det.confidence is not None else 1.0
        results.append({**base, "id": f"det{k}", "from_name": "label", "type": "rectanglelabels",
                        "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w,
                                  "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [names[k]]},
                        "score": score})
        if det.mask is not None:
            mscore = float(mask_scores[k]) if mask_scores is not None and len(mask_scores) == len(det) else score
            results.append({**base, "id": f"mask{k}", "from_name": "mask", "type": "brushlabels",
                            "value": {"format": "rle", "rle": mask_to_brush_rle(det.mask[k]), "brushlabels": [names[k]]},
                            "score": mscore})
    if record.tags:
        results.append({"id": "tags", "from_name": "tags", "to_name": "image", "type": "choices",
                        "value": {"choices": [t.name for t in record.tags]}})
    if record.caption:
        results.append({"id": "caption", "from_name": "caption", "to_name": "image", "type": "textarea",
                        "value": {"text": [record.caption]}})
    scores = [float(c) for c in det.confidence] if det.confidence is not None and len(det) else []
    return {
        "data": {"image": image_url(item.source, prefix), "source": item.source,
                 "tags": ", ".join(t.name for t in record.tags), "caption": record.caption or ""},
        "predictions": [{"model_version": dataset.pipeline_name,
                         "score": sum(scores) / len(scores) if scores else 0.0, "result": results}],
    }


def labeling_config(classes: list[str], tags: list[str], *, masks: bool = True, caption: bool = True) -> str:
    """The Label Studio labeling config XML matching the exported predictions."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name="image", value="$image", zoom="true")
    rect = ET.SubElement(view, "RectangleLabels", name="label", toName="image")
    for name in classes:
        ET.SubElement(rect, "Label", value=name)
    if masks:
        brush = ET.SubElement(view, "BrushLabels", name="mask", toName="image")
        for name in classes:
            ET.SubElement(brush, "Label", value=name)
    if tags:
        choices = ET.SubElement(view, "Choices", name="tags", toName="image", choice="multiple", showInline="true")
        for name in tags:
            ET.SubElement(choices, "Choice", value=name)
    if caption:
        ET.SubElement(view, "TextArea", name="caption", toName="image", editable="true", maxSubmissions="1")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"
