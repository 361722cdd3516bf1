"""COCO instances JSON: ``coco/annotations.json`` + ``coco/images/`` (links to the sources).

Boxes ``[x, y, w, h]``; masks as compressed COCO RLE (pycocotools, ``iscrowd: 0``); each
annotation carries the detection ``score`` (and ``mask_score`` when a segmenter set one);
category ids are 1-based indexes into the sorted class names; each image carries its
size, ``source``, ``tags`` and ``caption``. Loadable by ``pycocotools.coco.COCO`` and
``supervision.DetectionDataset.from_coco``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..record import mask_to_rle
from .common import StoreDataset, place_image


def export_coco(dataset: StoreDataset, out_dir: Path, *, images: bool = True) -> Path:
    """Write ``out_dir/annotations.json`` (and ``out_dir/images/``); returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    coco_images, annotations = [], []
    for item in dataset:
        record = item.record(masks=dataset.has_masks)
        image_id = item.index + 1
        coco_images.append({
            "id": image_id, "file_name": item.file_name, "width": item.width, "height": item.height,
            "source": item.source, "tags": [t.name for t in record.tags], "caption": record.caption,
        })
        det = dataset.detections(record, masks=True)
        mask_scores = record.detections.data.get("mask_score")
        for k in range(len(det)):
            x1, y1, x2, y2 = (float(v) for v in det.xyxy[k])
            ann = {
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(det.class_id[k]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                "score": float(det.confidence[k]) if det.confidence is not None else 1.0,
            }
            if det.mask is not None:
                ann["segmentation"] = mask_to_rle(det.mask[k])
                ann["area"] = float(np.count_nonzero(det.mask[k]))
            else:
                ann["segmentation"] = []
            if mask_scores is not None and len(mask_scores) == len(det):
                ann["mask_score"] = float(mask_scores[k])
            annotations.append(ann)
        if images:
            place_image(item.source, out_dir / "images" / item.file_name)
    doc = {
        "info": {"description": f"ram-grounded: {dataset.pipeline_name}", "version": "1.0"},
        "licenses": [],
        "categories": [{"id": i + 1, "name": name, "supercategory": "object"}
                       for i, name in enumerate(dataset.classes)],
        "images": coco_images,
        "annotations": annotations,
    }
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path
