"""The ASGI app: Label Studio ML backend + REST API, behind a token and a body limit.

``create_app(ServeConfig(...))`` loads the pipeline once; every route shares it through
one batch queue. Errors are JSON ``{"error": ..., "hint": ...}``, never a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, ImageLoadError, RamGroundedError
from ..pipeline import Pipeline
from .backend import Backend, ServeConfig
from .security import UrlRefused, token_matches

logger = logging.getLogger(__name__)

#: Paths reachable without a token (Label Studio polls it; it reveals nothing).
PUBLIC_PATHS = frozenset({"/health"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def create_app(config: ServeConfig | None = None, pipeline: Pipeline | None = None) -> FastAPI:
    """Build the app; ``pipeline`` overrides ``config.pipeline`` (tests, notebooks)."""
    from . import ls_routes, rest

    config = config or ServeConfig()
    backend = Backend(config, pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if config.warmup:
            await asyncio.to_thread(backend.warmup)
        backend.queue.start()
        yield
        backend.close()

    app = FastAPI(title="ram-grounded", version=backend.model_version, lifespan=lifespan, debug=False,
                  description="Recognize Anything -> Grounding DINO -> SAM as a Label Studio ML backend "
                              "and a REST API. Send `Authorization: Bearer <token>`.")
    app.state.backend = backend
    app.include_router(ls_routes.router)
    app.include_router(rest.router)
    _add_error_handlers(app)
    app.add_middleware(GuardMiddleware, token=config.token, max_body=config.max_body_bytes)
    return app


def _error(status: int, message: str, hint: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if hint:
        body["hint"] = hint
    body.update(extra)
    return JSONResponse(body, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RamGroundedError)
    async def _ours(request: Request, exc: RamGroundedError) -> JSONResponse:
        status = 403 if isinstance(exc, UrlRefused) else 422 if isinstance(exc, ImageLoadError) \
            else 400 if isinstance(exc, ConfigError) else 500
        return _error(status, exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return _error(422, "invalid request body", "see 'details' and /openapi.json", details=details)

    @app.exception_handler(_BodyTooLarge)
    async def _large(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_too_large(request.app.state.backend.config.max_body_bytes), status_code=413)

    @app.exception_handler(asyncio.TimeoutError)
    async def _timeout(request: Request, exc: Exception) -> JSONResponse:
        return _error(504, "the request took longer than the server's time limit",
                      "retry later, send a smaller image, or raise --request-timeout")

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, "internal server error", "the server log has the details")


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware: bearer token on every path but /health, body size limit."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and scope.get("path") not in PUBLIC_PATHS \
                and not token_matches(headers.get("authorization"), self.token):
            await _send_json(send, 401, {"error": "missing or wrong token",
                                         "hint": "send 'Authorization: Bearer <token>'"},
                             [(b"www-authenticate", b'Bearer realm="ram-grounded"')])
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, _too_large(self.max_body))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(self.max_body))


def _too_large(limit: int) -> dict[str, str]:
    return {"error": f"the request body is larger than the server's limit of {limit} bytes",
            "hint": "send a smaller image or raise --max-body-mb"}


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})
