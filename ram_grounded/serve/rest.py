"""REST API: ``POST /v1/annotate`` (an upload or a URL -> the record JSON), ``GET /v1/pipelines``."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from ..errors import ConfigError, ImageLoadError
from ..io.images import describe_source
from .backend import Backend

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["rest"])

_ANNOTATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"},
                               "classes": {"type": "string", "description": "comma-separated classes to ground"}}}},
            "application/json": {"schema": {
                "type": "object", "required": ["url"],
                "properties": {"url": {"type": "string", "format": "uri"},
                               "classes": {"type": "array", "items": {"type": "string"}}}}},
        },
    },
    "responses": {"200": {"description": "the Record as JSON (boxes xyxy in pixels, masks as COCO RLE, "
                                         "tags, caption, scores, meta with model ids)"}},
}


def _backend(request: Request) -> Backend:
    return request.app.state.backend


@router.get("/pipelines")
async def pipelines(request: Request) -> dict[str, Any]:
    """The pipeline this server runs, and the ready pipelines it could be started with."""
    from ..pipeline_yaml import list_pipelines

    return {"serving": _backend(request).describe(), "available": sorted(list_pipelines())}


@router.post("/annotate", openapi_extra=_ANNOTATE_BODY)
async def annotate(request: Request) -> Any:
    """Annotate one image: multipart field ``file``, or JSON ``{"url": ...}``."""
    backend = _backend(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data, source, classes = await _from_form(request)
    elif ctype == "application/json":
        data, source, classes = await _from_json(request, backend)
    else:
        raise ConfigError(f"unsupported content type {ctype or 'none'!r}",
                          hint="send multipart/form-data with a 'file' field, or JSON {\"url\": ...}")
    record = await anyio.to_thread.run_sync(backend.decode, data, source)
    if record.error:
        raise ImageLoadError(record.error, hint="send a JPEG, PNG, WebP, BMP, GIF or TIFF image")
    record = await backend.annotate(record, classes)
    out = record.to_dict()
    out["model_version"] = backend.model_version
    if record.error:  # a stage failed: the record (with what it has) rides along
        return JSONResponse({"error": f"the pipeline failed on this image: {record.error}",
                             "hint": "the server log has the details", "record": out}, status_code=500)
    return out


async def _from_form(request: Request) -> tuple[bytes, str, list[str] | None]:
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ConfigError("the multipart body has no file field 'file'", hint="curl -F file=@image.jpg ...")
        data = await upload.read()
        name = upload.filename or describe_source(data)
        raw_classes = form.get("classes")
    classes = [c.strip() for c in str(raw_classes).split(",") if c.strip()] if isinstance(raw_classes, str) else None
    return data, name, classes


async def _from_json(request: Request, backend: Backend) -> tuple[bytes, str, list[str] | None]:
    try:
        body = await request.json()
    except ValueError:
        raise ConfigError("the body is not valid JSON", hint='send {"url": "https://..."}') from None
    if not isinstance(body, dict) or not isinstance(body.get("url"), str):
        raise ConfigError("the JSON body needs a string field 'url'", hint='send {"url": "https://..."}')
    classes = body.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ConfigError("'classes' must be a list of strings", hint='e.g. {"url": ..., "classes": ["cat"]}')
    data = await backend.fetch(body["url"])
    return data, describe_source(body["url"]), classes
