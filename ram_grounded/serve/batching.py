"""A small request queue: requests that arrive together run as one pipeline batch.

Each server has one :class:`BatchQueue` per device, served by a single worker thread, so
concurrent requests share the loaded models and a model never runs twice at once on the
same device. The worker takes the first waiting request, then waits at most ``max_wait``
seconds for more, up to ``max_batch``; requests for different pipeline variants (e.g.
two Label Studio projects with different labels) are run as separate groups of one batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..record import Record

logger = logging.getLogger(__name__)

#: Runs one group of records (all for the same pipeline variant) and returns them.
BatchFn = Callable[[Any, list[Record]], list[Record]]

_device_locks: dict[str, threading.Lock] = {}
_device_locks_guard = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """The process-wide lock for ``device``: held while a batch runs there."""
    from ..devices import resolve_device
    from ..errors import ConfigError

    try:  # "auto" and "cpu" are one device here, so one lock
        key = str(resolve_device(device)) if isinstance(device, str) else str(device)
    except ConfigError:  # a name torch does not know (tests use labels): lock by the name
        key = str(device)
    with _device_locks_guard:
        return _device_locks.setdefault(key, threading.Lock())


@dataclass
class _Item:
    key: Any
    record: Record
    future: Future = field(default_factory=Future)


class BatchQueue:
    """Collects records from many threads/tasks and runs them in batches on one worker."""

    def __init__(self, run_group: BatchFn, *, max_batch: int = 8, max_wait: float = 0.01,
                 device: str = "cpu") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.run_group = run_group
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.device = device
        self.batches_run = 0
        self.largest_batch = 0
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=f"batch-{self.device}", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the worker finish what it holds and stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def submit(self, record: Record, key: Any = None) -> Future:
        """Queue ``record`` for the pipeline variant ``key``; the future gives the record back."""
        self.start()
        item = _Item(key, record)
        self._queue.put(item)
        return item.future

    async def run(self, record: Record, key: Any = None, timeout: float | None = None) -> Record:
        """Await the processed ``record`` (``asyncio.TimeoutError`` after ``timeout`` s)."""
        future = asyncio.wrap_future(self.submit(record, key))
        return await asyncio.wait_for(future, timeout) if timeout else await future

    # ------------------------------------------------------------------ worker
    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        groups: dict[Any, list[_Item]] = {}
        for item in live:
            groups.setdefault(item.key, []).append(item)
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(live))
        with device_lock(self.device):
            for key, items in groups.items():
                try:
                    results = self.run_group(key, [item.record for item in items])
                except BaseException as exc:  # noqa: BLE001 - hand the failure to every waiter
                    logger.warning("batch of %d failed: %s", len(items), exc, exc_info=exc)
                    for item in items:
                        item.future.set_exception(exc)
                    continue
                for item, record in zip(items, results):
                    item.future.set_result(record)
