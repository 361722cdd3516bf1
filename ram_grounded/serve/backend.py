"""The state every route shares: one loaded pipeline, its batch queue, the URL policy.

Requests only ever reach the models through :meth:`Backend.annotate`, which queues the
record on the device's :class:`~ram_grounded.serve.batching.BatchQueue`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import ConfigError
from ..pipeline import Pipeline
from ..record import Record
from .batching import BatchQueue
from .labelstudio import ProjectInfo
from .fetch import safe_fetch
from .security import UrlPolicy, origin_of

logger = logging.getLogger(__name__)

#: Key of the unmodified pipeline in the batch queue.
DEFAULT_KEY = ()


@dataclass
class ServeConfig:
    """Everything ``ram-grounded serve`` can set (see ``ram-grounded serve --help``)."""

    pipeline: str = "ram_grounded_sam"
    device: str = "auto"
    token: str | None = None
    allow_url_hosts: tuple[str, ...] = ()
    label_studio_url: str | None = field(default_factory=lambda: os.environ.get("LABEL_STUDIO_URL") or None)
    label_studio_token: str | None = field(default_factory=lambda: os.environ.get("LABEL_STUDIO_API_KEY") or None)
    max_batch: int = 8
    max_wait: float = 0.01
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_pixels: int | None = 8192 * 8192
    fetch_timeout: float = 10.0
    request_timeout: float = 300.0
    warmup: bool = False


#: Class-list variants of the pipeline kept at once (each is a cheap copy of the model-free
#: prompt stage; the model stages are shared).
MAX_VARIANTS = 256


class Backend:
    """One pipeline served to many concurrent requests."""

    def __init__(self, config: ServeConfig, pipeline: Pipeline | None = None) -> None:
        from .. import __version__
        from ..pipeline_yaml import load_pipeline
        from ..zoo import tiny_mode

        self.config = config
        self.pipeline = pipeline if pipeline is not None else load_pipeline(config.pipeline, device=config.device)
        suffix = "-tiny" if tiny_mode() else ""
        self.model_version = f"{self.pipeline.name}@ram-grounded-{__version__}{suffix}"
        self.policy = _policy(config)
        self.projects: dict[str, ProjectInfo] = {}
        self._variants: dict[tuple[Any, ...], Pipeline] = {DEFAULT_KEY: self.pipeline}
        self.queue = BatchQueue(self._run_group, max_batch=config.max_batch, max_wait=config.max_wait,
                                device=config.device)

    # --------------------------------------------------------------- pipelines
    def _run_group(self, key: tuple[Any, ...], records: list[Record]) -> list[Record]:
        return self._variants.get(key, self.pipeline).process_batch(records)

    def key_for(self, classes: list[str] | None, only: bool = False) -> tuple[Any, ...]:
        """Queue key of the pipeline variant that grounds ``classes`` (made on first use)."""
        if not classes:
            return DEFAULT_KEY
        key = (only, *classes)
        if key not in self._variants:
            variant = pipeline_for_classes(self.pipeline, classes, only=only)
            if variant is self.pipeline:
                return DEFAULT_KEY
            if len(self._variants) > MAX_VARIANTS:  # bounded: callers choose the class lists
                oldest = next(k for k in self._variants if k != DEFAULT_KEY)
                del self._variants[oldest]
            self._variants[key] = variant
        return key

    def warmup(self) -> None:
        """Load every model now rather than on the first request."""
        for stage in self.pipeline.stages:
            if hasattr(stage, "ensure_loaded"):
                stage.ensure_loaded()

    # ----------------------------------------------------------------- running
    def decode(self, data: bytes, source: str) -> Record:
        """Encoded image bytes -> a Record ready for the pipeline (errors stay on the record)."""
        from ..io import load_image

        record = Record(source=source)
        try:
            record.image = load_image(data, max_pixels=self.config.max_pixels)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as this record's error
            record.error = str(exc)
        return self.pipeline.to_record(record)

    async def annotate(self, record: Record, classes: list[str] | None = None, *, only: bool = False) -> Record:
        """Run ``record`` through the pipeline via the batch queue.

        ``classes`` are grounded besides the tags, or instead of them with ``only``
        (Label Studio: the project's labels are all an annotator can use).
        """
        if not record.ok:
            return record
        key = self.key_for(classes, only)
        if classes and key == DEFAULT_KEY and "prompt" in self.pipeline.inputs:
            record.prompt = list(classes)
        return await self.queue.run(record, key, timeout=self.config.request_timeout)

    async def fetch(self, url: str, headers: dict[str, str] | None = None, header_origin: str | None = None) -> bytes:
        """SSRF-checked download in a worker thread."""
        result = await anyio.to_thread.run_sync(
            lambda: safe_fetch(url, self.policy, headers=headers, header_origin=header_origin))
        return result.body

    def close(self) -> None:
        self.queue.stop()

    def describe(self) -> dict[str, Any]:
        """The served pipeline, for ``/v1/pipelines`` and ``/health``."""
        return {"name": self.pipeline.name, "model_version": self.model_version,
                "stages": [s.name for s in self.pipeline.stages], "inputs": sorted(self.pipeline.inputs)}


def pipeline_for_classes(pipe: Pipeline, classes: list[str], *, only: bool = False) -> Pipeline:
    """``pipe`` grounding ``classes`` too (``only``: instead of the tags).

    Its ``prompt_from_tags`` stage is rebuilt with ``classes`` (and ``use_tags=False`` when
    ``only``); model stages are shared, not copied. Returns ``pipe`` itself when it has no
    such stage (a pipeline taking ``prompt`` as an input gets the classes as each record's
    prompt instead).
    """
    stages, changed = [], False
    for stage in pipe.stages:
        if stage.name == "prompt_from_tags" and dataclasses.is_dataclass(stage) and hasattr(stage, "classes"):
            changes: dict[str, Any] = {"classes": list(classes)}
            if only and hasattr(stage, "use_tags"):
                changes["use_tags"] = False
            else:
                changes["classes"] = list(getattr(stage, "classes") or []) + list(classes)
            stage = dataclasses.replace(stage, **changes)
            changed = True
        stages.append(stage)
    if not changed:
        return pipe
    return Pipeline(stages, inputs=pipe.inputs, name=pipe.name, description=pipe.description,
                    max_pixels=pipe.max_pixels)


def _policy(config: ServeConfig) -> UrlPolicy:
    policy = UrlPolicy.from_entries(config.allow_url_hosts, max_bytes=config.max_image_bytes,
                                    timeout=config.fetch_timeout)
    if not config.label_studio_url:
        return policy
    # The operator named this Label Studio: allow exactly its origin (scheme, host, port),
    # even on loopback, and nothing else on that address.
    parts = urllib.parse.urlsplit(config.label_studio_url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--label-studio-url {config.label_studio_url!r} is not an http(s) URL with a host",
                          hint="e.g. http://127.0.0.1:8080")
    return dataclasses.replace(policy, origins=frozenset({origin_of(config.label_studio_url)}))
