"""YOLO datasets (Ultralytics layout): ``images/``, ``labels/<stem>.txt``, ``data.yaml``.

Detection: one ``class cx cy w h`` line per box (normalised). Segmentation: one polygon line
per connected part of each mask, from supervision's ``detections_to_yolo_annotations``
(OpenCV contours, holes joined by seams; a box is written where a mask is empty). Class ids
index ``names`` in ``data.yaml`` (the sorted class names). Every image gets a label file,
empty when nothing was found. Loadable by ``supervision.DetectionDataset.from_yolo``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from supervision.dataset.formats.yolo import detections_to_yolo_annotations

from .common import StoreDataset, place_image


def export_yolo(dataset: StoreDataset, out_dir: Path, *, segment: bool = False, images: bool = True) -> Path:
    """Write a YOLO detection (or, with ``segment``, segmentation) dataset; returns data.yaml."""
    labels = out_dir / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    for item in dataset:
        record = item.record(masks=segment)
        det = dataset.detections(record, masks=segment)
        lines = detections_to_yolo_annotations(
            det, image_shape=(item.height, item.width), approximation_percentage=0.0
        ) if len(det) else []
        (labels / f"{item.stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if images:
            place_image(item.source, out_dir / "images" / item.file_name)
    data = {"path": ".", "train": "images", "val": "images",
            "nc": len(dataset.classes), "names": list(dataset.classes)}
    path = out_dir / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
