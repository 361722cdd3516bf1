"""Exporters read the store and write datasets their own libraries load back correctly.

Round trips: pycocotools COCO (RLE masks, boxes, scores, sizes), supervision's
DetectionDataset.from_coco / from_yolo (boxes and polygon masks) / from_pascal_voc, Label
Studio tasks (percent boxes; brush RLE decoded by an independent decoder written here
from the rle-pack format) and the JSONL records.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import supervision as sv
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import test_export_fakes as fakes
from ram_grounded.engine.local import run_local
from ram_grounded.export import export_store, parse_formats
from ram_grounded.export.brush import mask_to_brush_rle
from ram_grounded.export.common import detection_class_names
from ram_grounded.pipeline_yaml import load_yaml
from ram_grounded.record import Record
from ram_grounded.store import RecordStore


def make_images(folder: Path, n: int = 6, seed: int = 0) -> list[Path]:
    """Coloured rectangles (holes and two parts in some) on black; some names clash."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(40, 90, 2))
        img = np.zeros((h, w, 3), np.uint8)
        for c in range(3):
            if rng.random() < 0.75:
                y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                img[y:y + int(rng.integers(8, h // 2)), x:x + int(rng.integers(8, w // 2)), c] = 255
        if i == 1:  # a red mask with a hole and a second part
            img[5:25, 5:25, 0] = 255
            img[10:15, 10:15, 0] = 0
            img[30:36, 30:38, 0] = 255
        sub = folder / ("sub" if i >= 4 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i % 4}.png"  # img0/img1 appear twice: file names must be made unique
        Image.fromarray(img).save(path)
        paths.append(path)
    return sorted(paths, key=lambda p: p.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> tuple[RecordStore, dict[str, Path]]:
    root = tmp_path_factory.mktemp("export")
    sources = [str(p) for p in make_images(root / "src")]
    pipe = load_yaml(fakes.FAKE_PIPELINE_YAML)
    store = RecordStore.create_or_resume(root / "out", pipe.to_dict())
    list(run_local(pipe, sources, store, batch_size=4))
    written = export_store(store, parse_formats("all"))
    return store, written


def stored(store: RecordStore) -> dict[str, Record]:
    return {r.source: r for r in store.iter_records()}


def by_name(dataset: sv.DetectionDataset) -> dict[str, tuple[np.ndarray, sv.Detections]]:
    return {Path(path).name: (image, det) for path, image, det in dataset}


def file_names(coco_json: Path) -> dict[str, str]:
    return {im["file_name"]: im["source"] for im in json.loads(coco_json.read_text())["images"]}


def test_coco_loads_in_pycocotools_with_exact_masks(annotated):
    store, written = annotated
    records = stored(store)
    coco = COCO(str(written["coco"]))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert list(names) == list(range(1, len(names) + 1)) and list(names.values()) == sorted(names.values())
    assert len(coco.getImgIds()) == len(records)
    n_ann = 0
    for img in coco.loadImgs(coco.getImgIds()):
        rec = records[img["source"]]
        assert (img["height"], img["width"]) == rec.size
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert [names[a["category_id"]] for a in anns] == detection_class_names(rec)
        for k, ann in enumerate(anns):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), rec.detections.mask[k])
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], rec.detections.xyxy[k], atol=1e-4)
            assert ann["score"] == pytest.approx(float(rec.detections.confidence[k]))
            assert ann["area"] == rec.detections.mask[k].sum()
            assert mask_utils.area(ann["segmentation"]) == ann["area"]
        n_ann += len(anns)
    assert n_ann == sum(len(r.detections) for r in records.values()) > 0


def test_coco_loads_in_supervision(annotated):
    store, written = annotated
    records = stored(store)
    sources = file_names(written["coco"])
    ds = sv.DetectionDataset.from_coco(str(written["coco"].parent / "images"), str(written["coco"]),
                                       force_masks=True)
    assert len(ds) == len(records)
    for name, (image, det) in by_name(ds).items():
        rec = records[sources[name]]
        assert image.shape[:2] == rec.size
        assert [ds.classes[c] for c in det.class_id] == detection_class_names(rec)
        np.testing.assert_allclose(det.xyxy, rec.detections.xyxy, atol=1e-4)
        if len(rec.detections):
            np.testing.assert_array_equal(det.mask, rec.detections.mask)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("fmt", ["yolo-det", "yolo-seg"])
def test_yolo_loads_in_supervision(annotated, fmt):
    store, written = annotated
    records = stored(store)
    sources = file_names(written["coco"])
    folder = written[fmt].parent
    ds = sv.DetectionDataset.from_yolo(str(folder / "images"), str(folder / "labels"), str(written[fmt]))
    assert len(ds) == len(records)
    for name, (image, det) in by_name(ds).items():
        rec = records[sources[name]]
        classes = detection_class_names(rec)
        if fmt == "yolo-det":
            assert [ds.classes[c] for c in det.class_id] == classes
            np.testing.assert_allclose(det.xyxy, rec.detections.xyxy, atol=0.01 * max(rec.size))
        else:  # one polygon per part; their union per class must match the mask
            for k, cls in enumerate(classes):
                parts = [det.mask[j] for j in range(len(det)) if ds.classes[det.class_id[j]] == cls]
                assert parts, cls
                assert _iou(np.logical_or.reduce(parts), rec.detections.mask[k]) > 0.85


def test_voc_loads_in_supervision(annotated):
    store, written = annotated
    records = stored(store)
    sources = file_names(written["coco"])
    folder = written["voc"].parent
    ds = sv.DetectionDataset.from_pascal_voc(str(folder / "JPEGImages"), str(written["voc"]))
    assert len(ds) == len(records)
    for name, (image, det) in by_name(ds).items():
        rec = records[sources[name]]
        assert [ds.classes[c] for c in det.class_id] == detection_class_names(rec)
        np.testing.assert_allclose(det.xyxy, rec.detections.xyxy, atol=1.01)
    assert (folder / "labels.txt").read_text().split() == sorted({c for r in records.values()
                                                                  for c in detection_class_names(r)})


def decode_brush(rle: list[int]) -> np.ndarray:
    """rle-pack decoder (independent of the encoder): bytes -> values."""
    bits = np.unpackbits(np.asarray(rle, np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        value = int("".join(map(str, bits[pos:pos + n])) or "0", 2)
        pos += n
        return value

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(num, np.uint8), 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def test_brush_rle_decodes_to_the_mask():
    rng = np.random.default_rng(3)
    for shape, density in [((1, 1), 1.0), ((7, 5), 0.5), ((40, 300), 0.02), ((300, 300), 1.0)]:
        mask = rng.random(shape) < density
        values = decode_brush(mask_to_brush_rle(mask)).reshape(*shape, 4)
        assert (values == np.where(mask, 255, 0)[..., None]).all()


def test_labelstudio_tasks_and_config(annotated):
    store, written = annotated
    records = stored(store)
    tasks = json.loads(written["labelstudio"].read_text())
    config = ET.parse(written["labelstudio"].parent / "config.xml").getroot()
    controls = {el.get("name"): el for el in config if el.get("toName") == "image"}
    assert config.find("Image").get("value") == "$image"
    assert len(tasks) == len(records)
    for task in tasks:
        rec = records[task["data"]["source"]]
        assert task["data"]["image"].endswith(Path(rec.source).as_posix().lstrip("/"))
        h, w = rec.size
        results = task["predictions"][0]["result"]
        for r in results:
            kind = r["type"]
            assert controls[r["from_name"]].tag.lower() == kind, r["from_name"]
            allowed = {c.get("value") for c in controls[r["from_name"]]}
            assert set(r["value"].get(kind, [])) <= allowed if kind != "textarea" else True
        rects = [r for r in results if r["type"] == "rectanglelabels"]
        brushes = [r for r in results if r["type"] == "brushlabels"]
        assert [r["value"]["rectanglelabels"][0] for r in rects] == detection_class_names(rec)
        for k, r in enumerate(rects):
            v = r["value"]
            box = [v["x"] * w / 100, v["y"] * h / 100, (v["x"] + v["width"]) * w / 100, (v["y"] + v["height"]) * h / 100]
            np.testing.assert_allclose(box, rec.detections.xyxy[k], atol=1e-3)
        for k, r in enumerate(brushes):
            assert (r["original_height"], r["original_width"]) == (h, w)
            alpha = decode_brush(r["value"]["rle"]).reshape(h, w, 4)[..., 3]
            np.testing.assert_array_equal(alpha > 0, rec.detections.mask[k])
        choices = [r for r in results if r["type"] == "choices"]
        assert [c for r in choices for c in r["value"]["choices"]] == [t.name for t in rec.tags]
        text = [r for r in results if r["type"] == "textarea"]
        assert text[0]["value"]["text"] == [rec.caption]


def test_jsonl_is_the_store_without_timings(annotated):
    store, written = annotated
    lines = written["jsonl"].read_text().splitlines()
    originals = list(store.iter_dicts())
    assert len(lines) == len(originals)
    for line, original in zip(lines, originals):
        data = json.loads(line)
        assert "timings" in original["meta"] and "timings" not in data["meta"]
        original["meta"].pop("timings")
        assert data == original


def test_export_command_rewrites_from_the_store(annotated, tmp_path):
    from typer.testing import CliRunner

    from ram_grounded.cli import app

    store, written = annotated
    result = CliRunner().invoke(app, ["export", str(store.directory), "--format", "coco,voc", "--to", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "coco" / "annotations.json").read_bytes() == written["coco"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "voc" / "Annotations").iterdir()) == \
        sorted(p.name for p in written["voc"].iterdir())
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "nowhere"), "--format", "coco"])
    assert bad.exit_code == 2 and "no run store" in bad.output
    bad = CliRunner().invoke(app, ["export", str(store.directory), "--format", "cocoa"])
    assert bad.exit_code == 2 and "unknown export format" in bad.output


def test_rewriting_removes_files_of_images_no_longer_in_the_store(annotated, tmp_path):
    store, written = annotated
    out = tmp_path / "again"
    (out / "yolo" / "labels").mkdir(parents=True)
    (out / "yolo" / "labels" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (out / "yolo" / "notes.md").write_text("mine")
    export_store(store, ["yolo-det"], out)
    assert not (out / "yolo" / "labels" / "gone.txt").exists() and (out / "yolo" / "notes.md").exists()
    assert sorted(p.name for p in (out / "yolo" / "labels").iterdir()) == \
        sorted(p.name for p in (written["yolo-det"].parent / "labels").iterdir())
