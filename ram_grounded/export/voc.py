"""Pascal VOC: ``Annotations/<stem>.xml`` (boxes) + ``JPEGImages/`` + ``labels.txt``.

The XML comes from supervision's ``detections_to_pascal_voc``; masks are left out (VOC
keeps segmentation in separate PNGs, which this exporter does not write). Loadable by
``supervision.DetectionDataset.from_pascal_voc``.
"""

from __future__ import annotations

from pathlib import Path

from supervision.dataset.formats.pascal_voc import detections_to_pascal_voc

from .common import StoreDataset, place_image


def export_voc(dataset: StoreDataset, out_dir: Path, *, images: bool = True) -> Path:
    """Write the VOC folders; returns the Annotations folder."""
    annotations = out_dir / "Annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    for item in dataset:
        det = dataset.detections(item.record(masks=False), masks=False)
        xml = detections_to_pascal_voc(
            det, classes=dataset.classes, filename=item.file_name,
            image_shape=(item.height, item.width, 3),
        )
        (annotations / f"{item.stem}.xml").write_text(xml, encoding="utf-8")
        if images:
            place_image(item.source, out_dir / "JPEGImages" / item.file_name)
    (out_dir / "labels.txt").write_text("".join(c + "\n" for c in dataset.classes), encoding="utf-8")
    return annotations
