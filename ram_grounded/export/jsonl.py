"""JSONL: the store's records (every one, failed ones included), one JSON object a line.

The same format as ``records.jsonl`` (``Record.to_dict``: masks as COCO RLE), without the
per-stage timings, so two runs over the same images give the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..store import RecordStore
from .common import clean_meta


def export_jsonl(store: RecordStore, out_dir: Path) -> Path:
    """Write ``out_dir/records.jsonl``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "records.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for data in store.iter_dicts():
            data["meta"] = clean_meta(data.get("meta", {}))
            fh.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    return path
