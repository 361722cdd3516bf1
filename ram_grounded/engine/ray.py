"""Run a Pipeline on Ray Data, appending to the same RecordStore as the local engine.

The sources are cut into the same fixed chunks as :mod:`.local` (chunk k =
sources[k*b:(k+1)*b]); chunks already stored are not sent. One dataset row is one chunk:
parallel Ray tasks read and decode its images (a bad image becomes an error record there),
then ``map_batches`` over an actor pool runs the pipeline on it as one batch. Each actor
rebuilds the pipeline once from its YAML description and keeps the models loaded. The
actors send back the exact store lines (``Record.to_dict``, masks as RLE), which come back
in chunk order (``preserve_order``) and are appended chunk by chunk, so the store is the
one the local engine writes. An actor that dies is replaced by Ray and its chunk retried:
only what reaches the driver is stored, so nothing is lost or stored twice.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..pipeline import Pipeline
from ..record import Record
from ..store import RecordStore, pipeline_fingerprint, record_line
from .local import Progress, start_progress

logger = logging.getLogger(__name__)

#: Test hook: a marker file path; the first actor to reach its second chunk creates it and
#: exits (SystemExit), once per marker, so tests can watch Ray replace it and retry.
KILL_ENV = "RAM_GROUNDED_TEST_KILL_ACTOR_ONCE"
INSTALL_HINT = "pip install 'ram-grounded[ray]'   (or: pip install 'ray[data]')"
MAX_BLOCKS = 10_000
#: Environment variables handed to the jobs' workers when joining an existing cluster.
FORWARDED_ENV = ("RAM_GROUNDED_ZOO", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def require_ray() -> None:
    """ConfigError saying how to install Ray Data unless it is installed (imports nothing)."""
    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed (missing: {', '.join(missing)})",
                          hint=INSTALL_HINT)


def import_ray(*, local: bool = False) -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it.

    ``local``: a private local Ray will be started, so first set the loopback settings
    that Ray reads when it is imported (see :mod:`.ray_env`).
    """
    if local:
        from .ray_env import prepare_loopback

        prepare_loopback()
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not only Ray core
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed ({exc})",
                          hint=INSTALL_HINT) from None
    return ray


def run_ray(
    pipeline: Pipeline,
    sources: Sequence[str],
    store: RecordStore,
    *,
    batch_size: int = 4,
    address: str | None = None,
    num_actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    decode_cpus: float = 1.0,
) -> Iterator[Progress]:
    """Process every source not yet in ``store`` on Ray; yields a :class:`Progress` per chunk.

    ``address``: None starts a private local Ray on 127.0.0.1 (shut down at the end) unless
    this process is already connected to one; "auto" or "ray://host:10001" joins a cluster.
    ``num_actors`` pipeline replicas each reserve ``cpus_per_actor`` CPUs and
    ``gpus_per_actor`` GPUs (0.5 puts two actors on one GPU); every decoding task reserves
    ``decode_cpus``. The sources must be readable where the tasks run (shared storage or URLs).
    """
    if batch_size < 1 or num_actors < 1 or min(gpus_per_actor, cpus_per_actor) < 0 or decode_cpus <= 0:
        raise ConfigError(f"ray engine: batch_size and num_actors must be >= 1, CPUs/GPUs per actor >= 0, "
                          f"decode_cpus > 0 (got {batch_size}, {num_actors}, {cpus_per_actor}, {gpus_per_actor}, "
                          f"{decode_cpus})", hint="e.g. --num-actors 2 --gpus-per-actor 0.5")
    ray = import_ray(local=address is None)
    spec_yaml, stage_classes = pipeline_spec(pipeline)
    keys, done, progress = start_progress(sources, store)
    yield progress
    starts = pending_chunks(keys, done, batch_size)
    if not starts:
        return
    with _connected(ray, address) as started_here, _data_context(ray):
        _check_resources(ray, num_actors * cpus_per_actor + decode_cpus, num_actors * gpus_per_actor,
                         fatal=started_here)
        items = [{"chunk": i, "sources": json.dumps(list(sources[s:s + batch_size]))} for i, s in enumerate(starts)]
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        # Decoding tasks must stay apart from the actors: Ray Data fuses a map into the next
        # actor stage when their remote args are equal, and then decodes inside the actors,
        # one chunk at a time between forwards. max_calls=0 (Ray's default for CPU tasks: a
        # worker is never recycled) is an arg the actors do not have, so the two never fuse.
        ds = ds.map(_decode_chunk, fn_kwargs={"max_pixels": pipeline.max_pixels}, num_cpus=decode_cpus,
                    max_calls=0)
        ds = ds.map_batches(
            PipelineActor,
            batch_size=1,  # one row = one chunk = one forward, as in the local engine
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
            fn_constructor_kwargs={"spec_yaml": spec_yaml, "stage_classes": stage_classes,
                                   "kill_marker": os.environ.get(KILL_ENV)},
        )
        expected = 0
        for row in ds.iter_rows():
            if int(row["chunk"]) != expected:  # preserve_order guarantees it; never store out of order
                raise RuntimeError(f"ray engine: got chunk {row['chunk']} while expecting {expected}")
            start = starts[expected]
            expected += 1
            lines = str(row["lines"]).split("\n")
            chunk_keys = keys[start:start + batch_size]
            fresh = [_StoredRecord.from_line(line) for line, k in zip(lines, chunk_keys, strict=True) if k not in done]
            store.append(fresh)
            progress.count(fresh)
            yield progress
        logger.info("ray engine: %s", ds.stats())
        if expected != len(starts):
            raise RuntimeError(f"ray engine: {len(starts) - expected} chunk(s) never came back; run again to resume")


def pending_chunks(keys: Sequence[str], done: set[str], batch_size: int) -> list[int]:
    """Start positions of the fixed chunks that hold at least one source not in ``done``."""
    return [s for s in range(0, len(keys), batch_size) if not all(k in done for k in keys[s:s + batch_size])]


def pipeline_spec(pipeline: Pipeline) -> tuple[str, dict[str, type]]:
    """The YAML text the actors rebuild ``pipeline`` from, and its stage classes by name.

    The classes travel with the job (pickled by reference when importable), so stages a
    script registered in its own process also exist in the workers. ConfigError when the
    YAML round trip would not rebuild the same pipeline.
    """
    import yaml

    from ..pipeline_yaml import load_yaml

    spec = pipeline.to_dict()
    if pipeline.max_pixels is not None:
        spec["max_pixels"] = pipeline.max_pixels
    stage_classes = {stage.name: type(stage) for stage in pipeline.stages}
    try:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
        rebuilt = load_yaml(text)
    except (yaml.YAMLError, ConfigError) as exc:
        raise ConfigError(f"ray engine: pipeline {pipeline.name!r} cannot be described as YAML ({exc})",
                          hint="the actors rebuild it from its YAML; use YAML-representable stage parameters") from None
    if pipeline_fingerprint(rebuilt.to_dict()) != pipeline_fingerprint(pipeline.to_dict()):
        raise ConfigError(f"ray engine: pipeline {pipeline.name!r} does not survive its YAML round trip",
                          hint="make every stage setting a dataclass field (the YAML parameters)")
    return text, stage_classes


def _decode_chunk(row: dict[str, Any], max_pixels: int | None) -> dict[str, Any]:
    """Ray task: the chunk's sources -> pickled decoded Records (bad images carry ``.error``)."""
    decoder = Pipeline([], max_pixels=max_pixels)  # the very decoding the local engine uses
    records = [decoder.to_record(source) for source in json.loads(row["sources"])]
    return {"chunk": row["chunk"], "records": pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)}


class PipelineActor:
    """One pipeline replica: built once per actor from YAML, models kept between chunks."""

    def __init__(self, spec_yaml: str, stage_classes: dict[str, type], kill_marker: str | None = None) -> None:
        from ..pipeline_yaml import load_yaml
        from ..registry import register_stage

        for cls in stage_classes.values():
            register_stage(cls)
        self.pipeline = load_yaml(spec_yaml)
        self.kill_marker = kill_marker
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.kill_marker and self.calls >= 2 and _claim(self.kill_marker):
            logger.warning("test hook %s: this actor exits now", KILL_ENV)
            raise SystemExit(1)
        lines = []
        for payload in batch["records"]:
            records = self.pipeline.process_batch(pickle.loads(payload))
            lines.append("\n".join(record_line(r) for r in records))
        return {"chunk": np.asarray(batch["chunk"]), "lines": np.asarray(lines, dtype=object)}


def _claim(marker: str) -> bool:
    """Create ``marker``; True only for the one caller that created it."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class _StoredRecord(Record):
    """A Record read back from an actor's store line; its ``to_dict`` is that line's exact dict."""

    _stored: dict[str, Any]

    @classmethod
    def from_line(cls, line: str) -> _StoredRecord:
        data = json.loads(line)
        det = data.get("detections") or {}
        light = {**data, "detections": {k: v for k, v in det.items() if k not in ("mask", "mask_shape")}}
        record = cls.from_dict(light)  # masks left out: the driver only counts and reports
        record._stored = data
        return record

    def to_dict(self) -> dict[str, Any]:
        return self._stored


def _check_resources(ray: Any, cpus: float, gpus: float, *, fatal: bool) -> None:
    """Say so when the actors plus one decoding task do not fit (the run would wait forever)."""
    have = ray.cluster_resources()
    if cpus <= have.get("CPU", 0) and gpus <= have.get("GPU", 0):
        return
    message = (f"ray engine: the actors and one decoding task need {cpus:g} CPUs and {gpus:g} GPUs; "
               f"the cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")
    hint = "lower --num-actors, --gpus-per-actor or --cpus-per-actor"
    if fatal:
        raise ConfigError(message, hint=hint)
    logger.warning("%s (%s; waiting in case an autoscaler adds nodes)", message, hint)


@contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[bool]:
    """Use the current Ray connection, or start/join one for the run and leave it after.

    Yields True when this call started a private local Ray (its resources cannot grow).
    """
    if ray.is_initialized():
        yield False
        return
    if address is None:
        from .ray_env import start_local_ray

        start_local_ray()
        started = True
    else:
        started = False
        logger.info("joining the Ray cluster at %s", address)
        # the workers there do not see this shell: hand them our own settings (e.g. RAM_GROUNDED_ZOO)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": env} if env else None)
    try:
        yield started
    finally:
        ray.shutdown()


@contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ordered output and no Ray progress bars (the CLI draws its own) for this run only."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
