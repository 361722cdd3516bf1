"""Measuring a pipeline: per-stage latency, throughput and memory (``ram-grounded bench``).

:func:`run_bench` builds a pipeline (or one stage alone), loads its models — by default at
their released sizes with random weights (:func:`random_weights`; same compute as the
published checkpoints, nothing downloaded) — and runs it over synthetic images. It returns
a :class:`BenchResult`: per-stage median seconds per image, images/s, peak resident memory
(sampled from ``/proc/self/statm``), batch size and torch threads; with ``baseline=True``
the same modules also run the naive way (one image at a time, one SAM call per box, the
image embedding recomputed for every box) and the ratio is reported.

Random weights give random outputs, so the workload is fixed instead: after a tagging stage
each image keeps ``tags`` tags (the prompt length), after a box-producing stage ``boxes``
boxes (the SAM load), padded with made-up ones where the model found fewer. These shaping
steps are not timed. A benchmark is not a test; see DESIGN.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import zoo
from .bench_workload import NAIVE_NOTE, ShapeBoxes, ShapeTags, fill_inputs, naive_sam, shaping_after
from .errors import ConfigError, StageError
from .record import Record

logger = logging.getLogger(__name__)

WEIGHTS = ("random", "tiny", "released")


@dataclass
class StageFigures:
    """One stage: model, parameter count, load time, median/mean seconds per image, peak RSS."""

    name: str
    model: str | None
    params_m: float
    load_s: float
    median_s: float
    mean_s: float
    peak_rss_mb: float   # process RSS peak while the stage ran (models included)
    extra_mb: float      # peak above the RSS at the stage's start (activations, outputs)


@dataclass
class RunFigures:
    """One way of running (``batched`` or ``naive``) over all images."""

    mode: str
    batch_size: int
    total_s: float
    images_per_s: float
    stages: list[StageFigures]
    boxes_per_image: float
    tags_per_image: float


@dataclass
class BenchResult:
    """Everything ``bench`` measured (``to_dict`` is the ``--json`` output)."""

    pipeline: str
    stages: list[str]
    weights: str
    images: int
    size: tuple[int, int]
    device: str
    threads: int
    torch: str
    workload: dict[str, int]
    batched: RunFigures
    baseline: RunFigures | None = None
    peak_rss_mb: float = 0.0
    loadavg: dict[str, list[float]] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        """Naive seconds / batched seconds (how many times faster the batched run is)."""
        if self.baseline is None or self.batched.total_s <= 0:
            return None
        return self.baseline.total_s / self.batched.total_s

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["speedup"] = self.speedup
        if self.baseline is not None:
            out["baseline_note"] = NAIVE_NOTE
        return out


# ----------------------------------------------------------------- weights
@contextlib.contextmanager
def random_weights(seed: int = 0) -> Iterator[None]:
    """Within the block, every zoo name loads at its released size with random weights.

    Replaces ``zoo.load_model`` (which stages call as ``zoo.load_model(...)``); local paths
    still load the user's file. Models are built once per name and shared.
    """
    from .models.random_full import build_random_full

    original = zoo.load_model
    cache: dict[str, Any] = {}
    saved_env = os.environ.pop(zoo.TINY_ENV, None)  # random mode wins over a tiny setting

    def load_model(name_or_path: Any, device: Any = "cpu", arch: str | None = None, seed_: int = 0) -> Any:
        name = str(name_or_path)
        card = zoo.cards().get(name)
        if card is None:
            return original(name_or_path, device=device, arch=arch)
        if arch is not None and card.arch != arch:
            raise ConfigError(f"model {name!r} is a {card.arch} model, not {arch}", hint=f"pick a {arch} model")
        if name not in cache:
            cache[name] = build_random_full(card, seed)
        model = cache[name]
        return model.to(device) if hasattr(model, "to") else model

    zoo.load_model = load_model  # type: ignore[assignment]
    try:
        yield
    finally:
        zoo.load_model = original  # type: ignore[assignment]
        if saved_env is not None:
            os.environ[zoo.TINY_ENV] = saved_env


@contextlib.contextmanager
def weights_mode(weights: str, seed: int = 0) -> Iterator[None]:
    """``random`` (released sizes), ``tiny`` (the tiny zoo) or ``released`` (the real files)."""
    if weights == "random":
        with random_weights(seed):
            yield
    elif weights == "tiny":
        saved = os.environ.get(zoo.TINY_ENV)
        os.environ[zoo.TINY_ENV] = "tiny"
        try:
            yield
        finally:
            os.environ.pop(zoo.TINY_ENV) if saved is None else os.environ.__setitem__(zoo.TINY_ENV, saved)
    elif weights == "released":
        yield
    else:
        raise ConfigError(f"unknown weights {weights!r}", hint=f"use one of {', '.join(WEIGHTS)}")


# ------------------------------------------------------------------ memory
class RssSampler:
    """Peak resident memory of this process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        """Current resident bytes (``/proc/self/statm``; the lifetime peak where there is no /proc)."""
        try:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:
            return peak_rss_bytes()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self.rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def window(self) -> Iterator[dict[str, float]]:
        """Peak MB over the block, in ``out["peak_mb"]`` after it."""
        out: dict[str, float] = {}
        start = self._peak = self.rss()
        yield out
        peak = max(self._peak, self.rss())
        out["peak_mb"], out["extra_mb"] = peak / 2**20, (peak - start) / 2**20


def peak_rss_bytes() -> int:
    """Lifetime peak RSS of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if os.uname().sysname == "Darwin" else int(value) * 1024


# ------------------------------------------------------------------- running
def synthetic_images(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB uint8 images (upsampled noise: content does not change the compute)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(max(height // 32, 2), max(width // 32, 2), 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR)))
    return out


def count_params(stage: Any) -> float:
    """Millions of parameters in the modules a stage holds (deduplicated)."""
    import torch

    seen: set[int] = set()
    total = 0
    for value in vars(stage).values():
        for module in (value, getattr(value, "model", None), getattr(value, "sam", None)):
            if isinstance(module, torch.nn.Module):
                for p in module.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel()
    return total / 1e6


def _run(stages: list[Any], images: list[np.ndarray], fields: frozenset[str], workload: dict[str, int],
         batch_size: int, naive: bool, sampler: RssSampler, seed: int
         ) -> tuple[dict[str, list[float]], dict[str, dict[str, float]], list[Record]]:
    """Run once; per stage name: seconds per image (one value per batch), peak and extra MB."""
    times: dict[str, list[float]] = {s.name: [] for s in stages if not s.name.startswith("bench:")}
    peaks: dict[str, float] = dict.fromkeys(times, 0.0)
    extra: dict[str, float] = dict.fromkeys(times, 0.0)
    done: list[Record] = []
    step = 1 if naive else batch_size
    for start in range(0, len(images), step):
        batch = [fill_inputs(Record(image=img, source=f"synthetic-{start + i}"), fields, workload, seed + start + i)
                 for i, img in enumerate(images[start:start + step])]
        logger.info("bench: %s images %d-%d of %d", "naive" if naive else "batched", start + 1,
                    start + len(batch), len(images))
        for stage in stages:
            if stage.name.startswith("bench:"):
                stage(batch)
                continue
            with sampler.window() as mem:
                t0 = time.perf_counter()
                try:
                    naive_sam(stage, batch[0]) if naive and hasattr(getattr(stage, "_predictor", None), "segment_batch") \
                        else stage(batch)
                except Exception as exc:  # noqa: BLE001 - a benchmark with a failing stage measures nothing
                    raise StageError(f"bench: stage {stage.name!r} failed: {type(exc).__name__}: {exc}",
                                     hint="run the pipeline with `ram-grounded run` to see the failure") from exc
                elapsed = time.perf_counter() - t0
            times[stage.name].append(elapsed / len(batch))
            peaks[stage.name] = max(peaks[stage.name], mem["peak_mb"])
            extra[stage.name] = max(extra[stage.name], mem["extra_mb"])
        done.extend(batch)
    return times, {"peak": peaks, "extra": extra}, done


def _figures(mode: str, stages: list[Any], loads: dict[str, float], times: dict[str, list[float]],
             peaks: dict[str, dict[str, float]], total: float, records: list[Record], batch_size: int) -> RunFigures:
    figures = [StageFigures(s.name, getattr(s, "model", None), round(count_params(s), 3), round(loads.get(s.name, 0.0), 3),
                            statistics.median(times[s.name]), statistics.fmean(times[s.name]), round(peaks["peak"][s.name], 1),
                            round(peaks["extra"][s.name], 1))
               for s in stages if s.name in times]
    return RunFigures(mode, batch_size, total, len(records) / total if total > 0 else 0.0, figures,
                      float(np.mean([len(r.detections) for r in records])),
                      float(np.mean([len(r.tags) for r in records])))


def build_stages(pipeline: str | None, stage: str | None, overrides: dict[str, Any], device: str) -> tuple[str, list[Any], frozenset[str]]:
    """(name, stages, fields the caller must supply) for a pipeline or one stage alone."""
    from .pipeline_yaml import build_stage, load_pipeline

    if (pipeline is None) == (stage is None):
        raise ConfigError("bench: give either a pipeline or a stage", hint="--pipeline ram_grounded_sam or --stage sam")
    if stage is not None:
        params = {k.split(".", 1)[-1]: v for k, v in overrides.items() if "." not in k or k.startswith(stage + ".")}
        built = build_stage(stage, params, device=device)
        return stage, [built], frozenset(built.reads) - {"image", "source"}
    pipe = load_pipeline(pipeline, device=device)
    for key, value in overrides.items():
        name, _, param = key.rpartition(".")
        targets = [s for s in pipe.stages if s.name == name or not name]
        if not targets or not all(param in {f.name for f in dataclasses.fields(s)} for s in targets):
            raise ConfigError(f"bench: --set {key}: no such stage parameter in {pipe.name}",
                              hint="write STAGE.PARAM=VALUE, e.g. sam.model=sam_vit_b")
        for target in targets:
            rebuilt = build_stage(target.name, {**target.params(), param: value})
            pipe.stages[pipe.stages.index(target)] = rebuilt
    return pipe.name, pipe.stages, frozenset(pipe.inputs)


def run_bench(pipeline: str | None = "ram_grounded_sam", *, stage: str | None = None, images: int = 4,
              size: tuple[int, int] = (640, 480), batch_size: int = 4, device: str = "auto", threads: int = 0,
              baseline: bool = False, weights: str = "random", tags: int = 12, boxes: int = 10, warmup: int = 1,
              overrides: dict[str, Any] | None = None, seed: int = 0) -> BenchResult:
    """Measure ``pipeline`` (or ``stage`` alone) on ``images`` synthetic images of ``size`` (w, h)."""
    import torch

    from .devices import resolve_device

    if images < 1 or batch_size < 1 or warmup < 0 or tags < 0 or boxes < 0:
        raise ConfigError("bench: images and batch size must be >= 1; warmup, tags and boxes >= 0",
                          hint="e.g. --images 4 --batch-size 4")
    if threads > 0:
        torch.set_num_threads(threads)
    dev = str(resolve_device(device))
    workload = {"tags": tags, "boxes": boxes}
    loadavg = {"start": list(os.getloadavg())}
    with weights_mode(weights, seed), RssSampler() as sampler:
        name, stages, fields = build_stages(pipeline, stage, dict(overrides or {}), dev)
        loads: dict[str, float] = {}
        for s in stages:
            t0 = time.perf_counter()
            if hasattr(s, "ensure_loaded"):
                s.ensure_loaded()
            loads[s.name] = time.perf_counter() - t0
        shaped = shaping_after(stages, workload, seed)
        pictures = synthetic_images(images + warmup, size[0], size[1], seed)
        runs: list[RunFigures] = []
        with torch.no_grad():  # stages disable gradients themselves; this covers plugins too
            for naive in ([False, True] if baseline else [False]):
                if warmup:  # the naive run warms up with batches of one (its shapes), SAM batched
                    _run(shaped, pictures[:warmup], fields, workload, 1 if naive else batch_size, False, sampler, seed)
                t0 = time.perf_counter()
                times, peaks, done = _run(shaped, pictures[warmup:], fields, workload, batch_size, naive, sampler, seed)
                total = time.perf_counter() - t0
                runs.append(_figures("naive" if naive else "batched", stages, loads, times, peaks, total, done,
                                     1 if naive else batch_size))
    loadavg["end"] = list(os.getloadavg())
    return BenchResult(name, [s.name for s in stages], weights, images, size, dev, torch.get_num_threads(),
                       torch.__version__, workload, runs[0], runs[1] if baseline else None,
                       round(peak_rss_bytes() / 2**20, 1), loadavg)


__all__ = ["BenchResult", "RunFigures", "RssSampler", "ShapeBoxes", "ShapeTags", "StageFigures", "WEIGHTS",
           "random_weights", "run_bench", "synthetic_images", "weights_mode"]
