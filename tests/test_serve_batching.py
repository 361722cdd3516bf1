"""The batch queue: batches concurrent submissions, one model run per device at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ram_grounded.record import Record
from ram_grounded.serve.batching import BatchQueue


class Recorder:
    """A fake pipeline run: remembers batch sizes and the most runs ever in flight."""

    def __init__(self, delay: float) -> None:
        self.delay, self.sizes, self.active, self.peak = delay, [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, key, records: list[Record]) -> list[Record]:  # noqa: ANN001
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.sizes.append(len(records))
        time.sleep(self.delay)
        for r in records:
            r.caption = f"{key}:{r.source}"
        with self.lock:
            self.active -= 1
        return records


def test_batches_and_one_run_per_device() -> None:
    shared = Recorder(delay=0.05)
    # two queues (e.g. two apps in one process) on the same device share the device lock
    queues = [BatchQueue(shared, max_batch=4, max_wait=0.02, device="cpu:test") for _ in range(2)]

    def submit(i: int) -> str:
        return queues[i % 2].submit(Record(source=str(i)), key=f"k{i % 3}").result(10).caption

    with ThreadPoolExecutor(24) as pool:
        captions = list(pool.map(submit, range(24)))
    assert captions == [f"k{i % 3}:{i}" for i in range(24)]  # every caller got its own record back
    assert shared.peak == 1  # never two runs at once on one device
    assert sum(shared.sizes) == 24 and max(shared.sizes) > 1 and max(shared.sizes) <= 4
    for q in queues:
        q.stop()


def test_a_failing_batch_fails_its_callers_only() -> None:
    def run(key, records):  # noqa: ANN001, ANN202
        if key == "bad":
            raise RuntimeError("boom")
        return records

    queue = BatchQueue(run, max_batch=8, max_wait=0.05)
    good, bad = queue.submit(Record(source="a"), "good"), queue.submit(Record(source="b"), "bad")
    assert good.result(5).source == "a"
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(5)
    queue.stop()
    with pytest.raises(ValueError):
        BatchQueue(run, max_batch=0)
