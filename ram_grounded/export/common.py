"""What every exporter shares: the dataset view of a store, class ids, image files.

An exporter reads Records from a :class:`~ram_grounded.store.RecordStore` (never the
models). Only records without an error become dataset images; failed ones are listed in
``errors.jsonl``. Class ids are stable: the sorted set of class names in the store
(YOLO id = index, COCO id = index + 1). Every image gets a unique file name (its own name,
``_1``, ``_2``... added on a clash, in store order), used by every format.

Image files: the formats that need the pixels beside their labels (YOLO, Pascal VOC, COCO)
get them under their own folder as hard links to the sources (a symlink where a hard link
is impossible, a copy as a last resort); sources that are URLs are not downloaded again
(their label files are written, the image file is left out and a warning is logged).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from ..io.sources import IMAGE_EXTENSIONS
from ..record import Record
from ..store import RecordStore

logger = logging.getLogger(__name__)

#: Meta keys that change from run to run (left out of exported JSON so outputs reproduce).
VOLATILE_META = frozenset({"timings"})


def detection_class_names(record: Record) -> list[str]:
    """The class name of every detection: ``data["class_name"]``, else ``prompt[class_id]``."""
    det = record.detections
    if "class_name" in det.data and len(det.data["class_name"]) == len(det):
        return [str(n) for n in det.data["class_name"]]
    ids = det.class_id if det.class_id is not None else [-1] * len(det)
    return [record.prompt[int(c)] if 0 <= int(c) < len(record.prompt) else "object" for c in ids]


@dataclass
class DatasetImage:
    """One exported image: its record (masks decoded lazily), file name and size."""

    index: int          # 0-based position among exported images
    file_name: str      # unique, e.g. "dog.jpg", "dog_1.jpg"
    source: str
    height: int
    width: int
    data: dict[str, Any]  # the stored dict

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem

    def record(self, *, masks: bool = True) -> Record:
        """The Record (masks decoded only when asked: they are the expensive part)."""
        data = self.data
        if not masks and data.get("detections", {}).get("mask") is not None:
            data = {**data, "detections": {k: v for k, v in data["detections"].items()
                                           if k not in ("mask", "mask_shape")}}
        return Record.from_dict(data)


class StoreDataset:
    """The exportable view of a store: good records, their class names, image names."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        manifest = store.manifest()
        self.pipeline_name: str = manifest.get("pipeline", {}).get("name", "ram-grounded")
        classes: set[str] = set()
        tags: set[str] = set()
        self.has_masks = False
        self.has_captions = False
        self._items: list[tuple[str, int, int, int]] = []  # source, h, w, line number
        taken: set[str] = set()
        self.file_names: list[str] = []
        for line_no, data in enumerate(store.iter_dicts()):
            if data.get("error") or not data.get("meta", {}).get("image_size"):
                continue
            h, w = data["meta"]["image_size"]
            record = DatasetImage(0, "", "", h, w, data).record(masks=False)
            classes.update(detection_class_names(record))
            tags.update(t.name for t in record.tags)
            self.has_masks |= "mask" in data.get("detections", {})
            self.has_captions |= bool(record.caption)
            self._items.append((data["source"], int(h), int(w), line_no))
            self.file_names.append(unique_file_name(str(data["source"]), taken))
        self.classes: list[str] = sorted(classes)
        self.class_ids = {name: i for i, name in enumerate(self.classes)}
        self.tags: list[str] = sorted(tags)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[DatasetImage]:
        wanted = {line: i for i, (_, _, _, line) in enumerate(self._items)}
        for line_no, data in enumerate(self.store.iter_dicts()):
            i = wanted.get(line_no)
            if i is None:
                continue
            source, h, w, _ = self._items[i]
            yield DatasetImage(i, self.file_names[i], source, h, w, data)

    def detections(self, record: Record, *, masks: bool = True) -> sv.Detections:
        """``record.detections`` with ``class_id`` = dataset class index (masks dropped if not asked)."""
        det = record.detections
        names = detection_class_names(record)
        out = sv.Detections(
            xyxy=det.xyxy.astype(np.float32).reshape(-1, 4),
            confidence=det.confidence,
            class_id=np.asarray([self.class_ids[n] for n in names], dtype=int),
            mask=det.mask if masks else None,
        )
        return out


def unique_file_name(source: str, taken: set[str]) -> str:
    """A file-system-safe name for ``source``'s image, unique by stem (case-insensitive)."""
    base = Path(source.split("?")[0].split("#")[0].rstrip("/")).name or "image"
    stem, suffix = os.path.splitext(base)
    suffix = suffix.lower() if suffix.lower() in IMAGE_EXTENSIONS else ".jpg"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:100] or "image"
    candidate, i = stem, 1
    while candidate.lower() in taken:
        candidate, i = f"{stem}_{i}", i + 1
    taken.add(candidate.lower())
    return candidate + suffix


def place_image(source: str, dest: Path) -> bool:
    """Make ``dest`` hold ``source``'s file: hard link, else symlink, else copy. False for URLs."""
    src = Path(source)
    if not src.is_file():
        logger.warning("%s: not a local file; %s is left out (labels are still written)", source, dest.name)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        try:
            if dest.samefile(src):
                return True
        except OSError:
            pass
        dest.unlink()
    try:
        os.link(src, dest)
    except OSError:
        try:
            dest.symlink_to(src.resolve())
        except OSError:
            shutil.copy2(src, dest)
    return True


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` without the keys that change from run to run."""
    return {k: v for k, v in meta.items() if k not in VOLATILE_META}
