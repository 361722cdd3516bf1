"""Run a Pipeline over a list of sources in this process, appending to a RecordStore.

Determinism: the sources are cut into fixed chunks of ``batch_size`` by their position in
the list (chunk k = sources[k*b:(k+1)*b]). A resumed run skips chunks whose sources are
all stored; a chunk that was only partly stored when the run died is computed again as a
whole (same batch composition as an uninterrupted run, so batched models give the same
numbers) and only its missing records are appended. Store order is list order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..pipeline import Pipeline
from ..record import Record
from ..export.common import detection_class_names
from ..store import RecordStore

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """What an engine reports after each batch (and once before the first)."""

    total: int
    done: int = 0              # stored so far, resumed ones included
    resumed: int = 0           # stored before this run started
    errors: int = 0            # failed records processed in this run
    objects: int = 0           # detections in records processed in this run
    processed: int = 0         # records processed in this run
    classes: set[str] = field(default_factory=set)
    batch: list[Record] = field(default_factory=list)  # records of the last batch (no pixels)

    def count(self, fresh: list[Record]) -> None:
        """Account for a batch of newly stored records."""
        self.done += len(fresh)
        self.processed += len(fresh)
        self.errors += sum(1 for r in fresh if r.error)
        for record in fresh:
            if record.ok:
                self.objects += len(record.detections)
                self.classes.update(detection_class_names(record))
        self.batch = fresh


def start_progress(sources: Sequence[str], store: RecordStore) -> tuple[list[str], set[str], Progress]:
    """Store keys of ``sources`` (what Record.source holds), those already stored, and the
    first Progress; duplicate sources raise ValueError (the store is keyed by source)."""
    from ..io import describe_source

    keys = [describe_source(s) for s in sources]
    if len(set(keys)) != len(keys):
        raise ValueError("sources must be unique")
    done = store.done_sources() & set(keys)
    return keys, done, Progress(total=len(sources), done=len(done), resumed=len(done))


def run_local(
    pipeline: Pipeline,
    sources: Sequence[str],
    store: RecordStore,
    *,
    batch_size: int = 4,
    num_workers: int = 2,
) -> Iterator[Progress]:
    """Process every source not yet in ``store``; yields a :class:`Progress` per batch.

    ``sources`` must be unique (the store is keyed by source); duplicates raise ValueError.
    """
    keys, done, progress = start_progress(sources, store)
    yield progress
    for start in range(0, len(sources), batch_size):
        chunk = list(sources[start:start + batch_size])
        chunk_keys = keys[start:start + batch_size]
        if all(k in done for k in chunk_keys):
            continue
        records = list(pipeline.run(chunk, batch_size=len(chunk), num_workers=num_workers))
        fresh = [r for r, k in zip(records, chunk_keys) if k not in done]
        for record in fresh:
            record.image = None  # the store keeps no pixels; free them now
        store.append(fresh)
        progress.count(fresh)
        yield progress

