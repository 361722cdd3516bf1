"""The issue's "done when": ``ram-grounded annotate assets/ --out OUT --format
coco,yolo,voc,labelstudio,jsonl`` with RAM_GROUNDED_ZOO=tiny writes all five formats, each
read back by its own library and consistent with the store.

Uses the real default pipeline (``ram_grounded_sam``: ram -> prompt_from_tags ->
grounding_dino -> sam) with tiny random-weight models, so the numbers are meaningless but
every stage, the store and every exporter run for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import supervision as sv
from pycocotools.coco import COCO
from typer.testing import CliRunner

from ram_grounded.cli import app
from ram_grounded.export.common import detection_class_names
from ram_grounded.store import RecordStore

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def test_annotate_assets_with_the_tiny_zoo_writes_all_five_formats(tmp_path, tiny_zoo):
    images = sorted(p for p in ASSETS.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    assert images, f"no demo images in {ASSETS}"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["annotate", str(ASSETS), "--out", str(out),
                                      "--format", "coco,yolo,voc,labelstudio,jsonl", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = {r.source: r for r in RecordStore.open(out).iter_records()}
    assert len(records) == len(images) and all(r.ok for r in records.values())
    n_objects = sum(len(r.detections) for r in records.values())

    coco = COCO(str(out / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == len(images) and len(coco.getAnnIds()) == n_objects
    for img in coco.loadImgs(coco.getImgIds()):
        rec = records[img["source"]]
        assert (img["height"], img["width"]) == rec.size
        for k, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))):
            if rec.detections.mask is not None:
                np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), rec.detections.mask[k])

    yolo = sv.DetectionDataset.from_yolo(str(out / "yolo" / "images"), str(out / "yolo" / "labels"),
                                         str(out / "yolo" / "data.yaml"))
    assert len(yolo) == len(images) and sum(len(d) for _, _, d in yolo) == n_objects
    voc = sv.DetectionDataset.from_pascal_voc(str(out / "voc" / "JPEGImages"), str(out / "voc" / "Annotations"))
    assert len(voc) == len(images) and sum(len(d) for _, _, d in voc) == n_objects
    if any(r.detections.mask is not None and len(r.detections) for r in records.values()):
        seg = sv.DetectionDataset.from_yolo(str(out / "yolo-seg" / "images"), str(out / "yolo-seg" / "labels"),
                                            str(out / "yolo-seg" / "data.yaml"))
        assert len(seg) == len(images)

    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    config = ET.parse(out / "labelstudio" / "config.xml").getroot()
    labels = {el.get("value") for el in config.iter("Label")}
    assert len(tasks) == len(images)
    for task in tasks:
        rec = records[task["data"]["source"]]
        rects = [r for r in task["predictions"][0]["result"] if r["type"] == "rectanglelabels"]
        assert [r["value"]["rectanglelabels"][0] for r in rects] == detection_class_names(rec)
        assert {r["value"]["rectanglelabels"][0] for r in rects} <= labels
    lines = (out / "jsonl" / "records.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["source"] for line in lines) == sorted(records)
