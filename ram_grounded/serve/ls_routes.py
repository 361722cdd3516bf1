"""Label Studio ML backend routes: ``/health``, ``/setup``, ``/predict``, ``/webhook``.

Label Studio calls ``/setup`` when a backend is connected (with its host name and an API
token), ``/predict`` with every selected task in one call, and ``/webhook`` on events.
Task images are downloaded from Label Studio itself (relative ``/data/...`` URLs, with
``Authorization: Token ...``) or from allowed URLs; all tasks of one call are queued
together, so they run as one batch.

Label Studio sends no bearer token: in its model settings choose basic auth, any user
name, and this server's token as the password (the server accepts that as the token).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError, ImageLoadError, RamGroundedError
from ..record import Record
from .backend import Backend
from .labelstudio import LabelConfig, ProjectInfo, parse_label_config, project_key, record_to_prediction
from .security import origin_of

logger = logging.getLogger(__name__)

router = APIRouter(tags=["label-studio"])


class PredictRequest(BaseModel):
    """What Label Studio posts to ``/predict``."""

    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


def _backend(request: Request) -> Backend:
    return request.app.state.backend


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness for Label Studio (no token needed)."""
    backend = _backend(request)
    return {"status": "UP", "model_class": "ram-grounded", "model_version": backend.model_version}


@router.get("/versions")
async def versions(request: Request) -> dict[str, Any]:
    """The model versions this backend can answer with (one: the served pipeline)."""
    return {"versions": [_backend(request).model_version]}


@router.post("/setup")
async def setup(request: Request) -> dict[str, Any]:
    """Remember the project's Label Studio host and token; answer our model version."""
    body = await request.json()
    if not isinstance(body, dict):
        body = {}
    info = ProjectInfo(hostname=body.get("hostname"), access_token=body.get("access_token"),
                       schema=body.get("schema"))
    if info.schema:
        parse_label_config(info.schema)  # a broken config fails here, not on every predict
    backend = _backend(request)
    backend.projects[project_key(body.get("project"))] = info
    return {"model_version": backend.model_version}


@router.post("/webhook")
async def webhook(request: Request) -> dict[str, Any]:
    """Label Studio events (TASKS_CREATED, ...): acknowledged; nothing to train."""
    try:
        body = await request.json()
    except ValueError:
        body = {}
    action = body.get("action") if isinstance(body, dict) else None
    logger.debug("webhook %s", action)
    return {"status": "ok", "action": action}


@router.post("/predict")
async def predict(request: Request, payload: PredictRequest) -> dict[str, Any]:
    """One prediction per task, in order: regions, choices and caption per the config."""
    backend = _backend(request)
    info = backend.projects.get(project_key(payload.project), ProjectInfo())
    schema = payload.label_config or info.schema
    if not schema:
        raise ConfigError("no labeling config: /predict carried none and /setup was not called",
                               hint="connect the backend to the project in Label Studio again")
    config = parse_label_config(schema)
    classes = config.prompt_classes
    records = await asyncio.gather(*(_task_record(backend, task, config, info) for task in payload.tasks))
    done = await asyncio.gather(*(backend.annotate(r, classes, only=True) for r in records))
    results = []
    for task, record in zip(payload.tasks, done):
        prediction = record_to_prediction(record, config, backend.model_version)
        error = prediction.pop("error", None)
        if error:
            logger.warning("task %s: %s", task.get("id"), error)
        results.append(prediction)
    return {"results": results, "model_version": backend.model_version}


async def _task_record(backend: Backend, task: dict[str, Any], config: LabelConfig, info: ProjectInfo) -> Record:
    key = config.image_key()
    data = task.get("data") or {}
    ref = data.get(key)
    source = f"task {task.get('id')}"
    if not isinstance(ref, str) or not ref:
        return Record(source=source, error=f"task data has no image under {key!r}")
    try:
        url, headers, origin = _resolve(ref, backend, info)
        body = await backend.fetch(url, headers, origin)
    except RamGroundedError as exc:
        return Record(source=source, error=str(exc))
    return await _decode(backend, body, ref)


async def _decode(backend: Backend, body: bytes, source: str) -> Record:
    import anyio

    return await anyio.to_thread.run_sync(backend.decode, body, source)


def _resolve(ref: str, backend: Backend, info: ProjectInfo) -> tuple[str, dict[str, str], str | None]:
    """Absolute URL, headers, and the origin those headers may go to."""
    host = info.hostname or backend.config.label_studio_url
    token = info.access_token
    own_url, own_token = backend.config.label_studio_url, backend.config.label_studio_token
    if not token and own_token and host and own_url and origin_of(host) == origin_of(own_url):
        token = own_token  # the operator's token goes only to the operator's Label Studio
    if ref.startswith("/"):
        if not host:
            raise ImageLoadError(f"{ref[:80]}: a Label Studio path, but Label Studio's address is unknown",
                                 hint="start the server with --label-studio-url, or reconnect the backend")
        url = urllib.parse.urljoin(host.rstrip("/") + "/", ref.lstrip("/"))
    elif "://" in ref:
        url = ref
    else:
        raise ImageLoadError(f"{ref[:80]}: not a URL", hint="tasks must point at http(s) images")
    if host and token and origin_of(url) == origin_of(host):
        return url, {"Authorization": f"Token {token}"}, origin_of(host)
    return url, {}, None
