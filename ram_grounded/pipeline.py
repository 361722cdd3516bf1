"""Pipeline: an ordered list of stages, checked at construction, run in batches.

``Pipeline([...])`` checks that every field a stage reads is written by an earlier stage
or supplied by the caller. ``pipe(image)`` gives one Record; ``pipe.run(sources)`` streams
Records in input order, decoding images in threads; a bad image or a stage failure on one
record never stops the stream (the record carries ``.error``); a stage that cannot load its
model (missing weights, a bad setting) stops the run with that error. YAML round-trips through
:mod:`ram_grounded.pipeline_yaml`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

from .errors import ConfigError, RamGroundedError
from .record import RECORD_FIELDS, Record
from .stages.base import StageProtocol

logger = logging.getLogger(__name__)

#: Fields every caller supplies: the decoded image and where it came from.
CALLER_FIELDS = frozenset({"image", "source"})


class Pipeline:
    """An ordered, validated list of stages (see DESIGN.md, "Pipeline")."""

    def __init__(
        self,
        stages: Sequence[StageProtocol],
        *,
        inputs: Iterable[str] = (),
        name: str | None = None,
        description: str = "",
        max_pixels: int | None = None,
    ) -> None:
        self.stages = list(stages)
        self.inputs = frozenset(inputs)
        self.name = name or "+".join(s.name for s in self.stages) or "empty"
        self.description = description
        self.max_pixels = max_pixels
        self._check_fields()

    def _check_fields(self) -> None:
        from .registry import stages_writing

        unknown = self.inputs - RECORD_FIELDS
        if unknown:
            raise ConfigError(
                f"pipeline {self.name!r}: unknown input field(s) {sorted(unknown)}",
                hint=f"Record fields are {', '.join(sorted(RECORD_FIELDS))}",
            )
        available = set(CALLER_FIELDS | self.inputs)
        for stage in self.stages:
            for field_name in sorted(stage.reads):
                if field_name not in available:
                    writers = [w for w in stages_writing(field_name) if w != stage.name]
                    fix = f"add a stage that writes it ({', '.join(writers)}) before it" if writers \
                        else "supply it yourself"
                    raise ConfigError(
                        f"stage {stage.name!r} reads {field_name!r}, which no earlier stage writes "
                        f"and the caller does not supply",
                        hint=f"{fix}, or declare it as a pipeline input (inputs: [{field_name}])",
                    )
            available |= set(stage.writes)

    # ----------------------------------------------------------------- running
    def __call__(self, source: Any) -> Record:
        """Run the pipeline on one image (path, URL, bytes, PIL, ndarray or Record)."""
        return next(self.run([source], batch_size=1, num_workers=0))

    def run(
        self, sources: Iterable[Any], *, batch_size: int = 8, num_workers: int = 2
    ) -> Iterator[Record]:
        """Stream one Record per source, in input order, ``batch_size`` images per forward."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", hint="use --batch-size 1 or more")
        iterator = iter(sources)
        pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        try:
            while True:
                chunk = list(islice(iterator, batch_size))
                if not chunk:
                    return
                records = list(pool.map(self.to_record, chunk)) if pool else [self.to_record(s) for s in chunk]
                yield from self.process_batch(records)
        finally:
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)

    def to_record(self, source: Any) -> Record:
        """Decode one source into a Record; a decoding failure becomes ``record.error``."""
        from .io import describe_source, load_image

        record = source if isinstance(source, Record) else Record(source=describe_source(source))
        if record.image is None and record.ok:
            try:
                kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
                record.image = load_image(source if not isinstance(source, Record) else source.source, **kwargs)
            except RamGroundedError as exc:
                record.error = str(exc)
        if record.image is not None:
            record.meta["image_size"] = [int(record.image.shape[0]), int(record.image.shape[1])]
        return record

    def process_batch(self, records: list[Record]) -> list[Record]:
        """Run every stage over the records without an error; returns the same list."""
        for stage in self.stages:
            active = [r for r in records if r.ok]
            if not active:
                break
            # Loading is outside the per-record guard: missing weights or a bad setting would
            # fail every image alike, so they stop the run with their own message instead.
            ensure_loaded = getattr(stage, "ensure_loaded", None)
            if ensure_loaded is not None:
                ensure_loaded()
            start = time.perf_counter()
            self._run_stage(stage, active)
            share = (time.perf_counter() - start) / len(active)
            for record in active:
                record.meta.setdefault("timings", {})[stage.name] = round(share, 6)
        return records

    @staticmethod
    def _run_stage(stage: StageProtocol, records: list[Record]) -> None:
        try:
            stage(records)
            return
        except Exception as exc:  # noqa: BLE001 - a failure must not stop the stream
            if len(records) == 1:
                _fail(records[0], stage, exc)
                return
            logger.warning("stage %s failed on a batch of %d (%s); retrying one by one",
                           stage.name, len(records), exc)
        for record in records:  # isolate the records that really fail
            try:
                stage([record])
            except Exception as exc:  # noqa: BLE001
                _fail(record, stage, exc)

    # -------------------------------------------------------------- description
    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready description (name, description, inputs, stages with params)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.inputs:
            out["inputs"] = sorted(self.inputs)
        out["stages"] = [
            {"stage": s.name, "params": dict(s.params()) if hasattr(s, "params") else {}}
            for s in self.stages
        ]
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of :meth:`to_dict`; also written to ``path`` when given."""
        from .pipeline_yaml import dump_yaml

        return dump_yaml(self, path)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path, **overrides: Any) -> Pipeline:
        """Build from a YAML file (or YAML text); ``overrides`` set e.g. ``device``."""
        from .pipeline_yaml import load_yaml

        return load_yaml(path_or_text, **overrides)

    def to(self, device: str) -> Pipeline:
        """Move every model-backed stage to ``device``."""
        for stage in self.stages:
            if hasattr(stage, "to"):
                stage.to(device)
        return self

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}: {' -> '.join(s.name for s in self.stages)})"


def _fail(record: Record, stage: StageProtocol, exc: Exception) -> None:
    if isinstance(exc, RamGroundedError):
        record.error = f"{stage.name}: {exc}"
    else:
        logger.warning("stage %s failed on %s", stage.name, record.source, exc_info=exc)
        record.error = f"{stage.name}: {type(exc).__name__}: {exc}"
