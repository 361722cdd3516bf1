"""The run store: ``DIR/records.jsonl`` (one Record per line), ``DIR/run.json``, ``DIR/errors.jsonl``.

Store first, formats second: every finished record is appended to ``records.jsonl`` (masks
as COCO RLE, see :meth:`Record.to_dict`) and flushed + fsynced once per batch, so a run
killed at any moment loses at most the batch being written. Exporters read the store back,
never the models.

- ``run.json`` holds the pipeline description (``Pipeline.to_dict()``) and its fingerprint.
  Opening a store with a different fingerprint is refused (``ConfigError``) unless the
  caller asks to start over (``overwrite=True``), so results of two pipelines never mix.
  The stages' ``device`` parameter is left out of the fingerprint: moving a run from one
  device to another does not change what it computes.
- A torn last line (kill -9 in the middle of a write) is cut off when the store is opened.
- ``errors.jsonl`` lists ``{"source", "error"}`` for every failed record. It is derived
  from ``records.jsonl`` (appended per batch, rewritten by :meth:`RecordStore.finalize`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .record import Record

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
MANIFEST_FILE = "run.json"
ERRORS_FILE = "errors.jsonl"
STORE_FORMAT = "ram-grounded-store"
STORE_VERSION = 1

#: Stage parameters that do not change results, left out of the fingerprint.
NEUTRAL_PARAMS = frozenset({"device"})


def pipeline_fingerprint(description: dict[str, Any]) -> str:
    """sha256 of a pipeline description (``Pipeline.to_dict()``), device parameters left out."""
    stages = [
        {"stage": s.get("stage"),
         "params": {k: v for k, v in (s.get("params") or {}).items() if k not in NEUTRAL_PARAMS}}
        for s in description.get("stages", [])
    ]
    core = {k: v for k, v in description.items() if k not in ("stages", "description")}
    core["stages"] = stages
    text = json.dumps(core, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_line(record: Record) -> str:
    """One store line for ``record`` (compact JSON, no trailing newline)."""
    return json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"), sort_keys=False)


class RecordStore:
    """A run folder: append records, list what is done, read records back."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    # ------------------------------------------------------------------ paths
    @property
    def records_path(self) -> Path:
        return self.directory / RECORDS_FILE

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_FILE

    @property
    def errors_path(self) -> Path:
        return self.directory / ERRORS_FILE

    def exists(self) -> bool:
        """True when the folder holds a store (a ``run.json``)."""
        return self.manifest_path.is_file()

    # --------------------------------------------------------------- opening
    @classmethod
    def create_or_resume(
        cls, directory: str | Path, pipeline: dict[str, Any], *, overwrite: bool = False
    ) -> RecordStore:
        """Open ``directory`` for a run of ``pipeline`` (its ``to_dict()``).

        A new folder gets a fresh store; an existing store with the same fingerprint is
        resumed (torn last line cut off); a different fingerprint raises ConfigError
        unless ``overwrite`` (then the old records and errors are deleted).
        """
        store = cls(directory)
        store.directory.mkdir(parents=True, exist_ok=True)
        fingerprint = pipeline_fingerprint(pipeline)
        if store.exists() and not overwrite:
            old = store.manifest()
            if old.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{store.directory}: holds results of different pipeline settings "
                    f"({old.get('pipeline', {}).get('name', '?')!r}, fingerprint {str(old.get('fingerprint'))[:12]}; "
                    f"now {pipeline.get('name', '?')!r}, {fingerprint[:12]})",
                    hint="pass --overwrite to start over in this folder, or choose another --out",
                )
            store.repair()
            return store
        if not overwrite and store.records_path.exists():
            raise ConfigError(f"{store.records_path}: exists but {MANIFEST_FILE} does not",
                              hint="pass --overwrite to start over in this folder, or choose another --out")
        for path in (store.records_path, store.errors_path):
            path.unlink(missing_ok=True)
        manifest = {"format": STORE_FORMAT, "version": STORE_VERSION,
                    "fingerprint": fingerprint, "pipeline": pipeline}
        _write_atomic(store.manifest_path, json.dumps(manifest, ensure_ascii=False, indent=2, default=str) + "\n")
        store.records_path.touch()
        return store

    @classmethod
    def open(cls, directory: str | Path) -> RecordStore:
        """Open an existing store for reading (ConfigError when there is none)."""
        store = cls(directory)
        if not store.exists() or not store.records_path.is_file():
            raise ConfigError(f"{store.directory}: no run store here ({MANIFEST_FILE} + {RECORDS_FILE})",
                              hint="give the --out folder of an `ram-grounded annotate` run")
        return store

    def manifest(self) -> dict[str, Any]:
        """The contents of ``run.json``."""
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.manifest_path}: unreadable ({exc})",
                              hint="pass --overwrite to start over in this folder") from None

    def repair(self) -> int:
        """Cut off a torn or unreadable last line of ``records.jsonl``; returns the bytes removed.

        Only the tail is read: records are appended whole, so only the last line can be torn.
        """
        path = self.records_path
        if not path.is_file():
            return 0
        removed = 0
        while True:
            size = path.stat().st_size
            cut = _last_good_end(path, size)
            if cut == size:
                return removed
            logger.warning("%s: cutting a torn or unreadable tail of %d bytes (interrupted run)", path, size - cut)
            with path.open("r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
            removed += size - cut

    # --------------------------------------------------------------- writing
    def append(self, records: Iterable[Record]) -> None:
        """Append records (one batch) with a single write, then flush and fsync."""
        records = list(records)
        if not records:
            return
        text = "".join(record_line(r) + "\n" for r in records)
        with self.records_path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        failed = [r for r in records if r.error]
        if failed:
            with self.errors_path.open("a", encoding="utf-8") as fh:
                fh.write("".join(_error_line(r) for r in failed))
                fh.flush()

    def finalize(self) -> int:
        """Rewrite ``errors.jsonl`` from the records (exactly one line per failed record)."""
        lines = [_error_line(r) for r in self.iter_dicts() if r.get("error")]
        _write_atomic(self.errors_path, "".join(lines))
        return len(lines)

    # --------------------------------------------------------------- reading
    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        """Every stored record as a dict, in store order (a torn last line is skipped)."""
        if not self.records_path.is_file():
            return
        with self.records_path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.endswith(b"\n"):
                    return
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ConfigError(f"{self.records_path}:{number}: not a JSON record",
                                      hint="the store is damaged; remove that line or start over with --overwrite") from None

    def iter_records(self) -> Iterator[Record]:
        """Every stored record (no pixels), in store order."""
        for data in self.iter_dicts():
            yield Record.from_dict(data)

    def done_sources(self) -> set[str]:
        """Sources already stored (failed ones included: they are not retried)."""
        sources: set[str] = set()
        if not self.records_path.is_file():
            return sources
        with self.records_path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                match = _SOURCE_PREFIX.match(line)  # records start with "source": skip the rest
                source = json.loads(match.group(1)) if match else json.loads(line).get("source")
                if source is not None:
                    sources.add(source)
        return sources

    def __len__(self) -> int:
        return sum(1 for _ in self.iter_dicts())


_SOURCE_PREFIX = re.compile(rb'\{"source":("(?:[^"\\]|\\.)*"|null)[,}]')


def _last_good_end(path: Path, size: int, block: int = 1 << 20) -> int:
    """Byte offset just after the last complete, readable line (0 if there is none)."""
    with path.open("rb") as fh:
        start, buf = size, b""
        while True:  # read backwards until the last complete line is wholly in buf
            last_nl = buf.rfind(b"\n")
            if last_nl >= 0 and (buf.rfind(b"\n", 0, last_nl) >= 0 or start == 0):
                break
            if start == 0:
                return 0  # no newline at all
            start = max(0, start - block)
            fh.seek(start)
            buf = fh.read(size - start)
    line_start = buf.rfind(b"\n", 0, last_nl) + 1
    try:
        json.loads(buf[line_start:last_nl + 1])
    except ValueError:
        return start + line_start
    return start + last_nl + 1


def _error_line(record: Record | dict[str, Any]) -> str:
    source, error = (record.source, record.error) if isinstance(record, Record) else (record.get("source"), record.get("error"))
    return json.dumps({"source": source, "error": error}, ensure_ascii=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
