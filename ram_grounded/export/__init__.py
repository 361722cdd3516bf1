"""Dataset writers: COCO, YOLO (detection, segmentation), Pascal VOC, Label Studio, JSONL.

Each reads the run store (never the models), so ``ram-grounded export DIR`` rewrites any
format from ``DIR/records.jsonl``. :func:`export_store` writes the asked formats into
``DIR/<format>/``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..store import RecordStore

logger = logging.getLogger(__name__)

#: Format name -> output folder name. ``yolo`` is yolo-det plus yolo-seg when there are masks.
FORMATS = {
    "coco": "coco", "yolo-det": "yolo", "yolo-seg": "yolo-seg", "voc": "voc",
    "labelstudio": "labelstudio", "jsonl": "jsonl",
}
ALIASES = {"yolo": ("yolo-det", "yolo-seg"), "pascal_voc": ("voc",), "pascal-voc": ("voc",),
           "label-studio": ("labelstudio",), "yolo_seg": ("yolo-seg",), "yolo_det": ("yolo-det",),
           "all": ("coco", "yolo-det", "yolo-seg", "voc", "labelstudio", "jsonl")}


def parse_formats(text: str | Iterable[str]) -> list[str]:
    """``"coco,yolo"`` -> canonical format names, in a fixed order; ConfigError on unknown ones."""
    items = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    chosen: set[str] = set()
    for item in items:
        if item in FORMATS:
            chosen.add(item)
        elif item in ALIASES:
            chosen.update(ALIASES[item])
        else:
            raise ConfigError(f"unknown export format {item!r}",
                              hint="formats: coco, yolo, yolo-det, yolo-seg, voc, labelstudio, jsonl, all")
    return [f for f in FORMATS if f in chosen]


def export_store(store: RecordStore, formats: Iterable[str], out_dir: str | Path | None = None, *,
                 images: bool = True, image_url_prefix: str | None = None) -> dict[str, Path]:
    """Write ``formats`` from ``store`` into ``out_dir/<folder>`` (default: the store folder).

    ``yolo-seg`` is skipped (with a log line) when no record has masks, unless it was the
    only thing asked for. Returns format -> main output path.
    """
    from .coco import export_coco
    from .common import StoreDataset
    from .jsonl import export_jsonl
    from .labelstudio import DEFAULT_URL_PREFIX, export_labelstudio
    from .voc import export_voc
    from .yolo import export_yolo

    formats = parse_formats(list(formats))
    root = Path(out_dir) if out_dir is not None else store.directory
    dataset = StoreDataset(store)
    written: dict[str, Path] = {}
    for fmt in formats:
        target = root / FORMATS[fmt]
        _clear_stale(target)
        if fmt == "coco":
            written[fmt] = export_coco(dataset, target, images=images)
        elif fmt == "yolo-det":
            written[fmt] = export_yolo(dataset, target, images=images)
        elif fmt == "yolo-seg":
            if not dataset.has_masks and len(formats) > 1:
                logger.info("no masks in the store: yolo-seg skipped")
                continue
            written[fmt] = export_yolo(dataset, target, segment=True, images=images)
        elif fmt == "voc":
            written[fmt] = export_voc(dataset, target, images=images)
        elif fmt == "labelstudio":
            written[fmt] = export_labelstudio(dataset, target, image_url_prefix=image_url_prefix or DEFAULT_URL_PREFIX)
        elif fmt == "jsonl":
            written[fmt] = export_jsonl(store, target)
    return written


#: Files an exporter owns inside its folder (removed before rewriting, so none go stale).
_OWNED = ("images/*", "labels/*.txt", "Annotations/*.xml", "JPEGImages/*")


def _clear_stale(target: Path) -> None:
    for pattern in _OWNED:
        for path in target.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
