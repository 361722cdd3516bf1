"""The ``ram-grounded serve`` command: the Label Studio ML backend + REST API on uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError, RamGroundedError


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("serve")(serve_cmd)


def serve_cmd(
    host: Annotated[str, typer.Option(help="address to bind; anything but loopback needs a token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 9090,
    pipeline: Annotated[str, typer.Option(help="a ready pipeline name or a YAML file")] = "ram_grounded_sam",
    token_file: Annotated[Optional[Path], typer.Option(
        help="file holding the bearer token (default: $RAM_GROUNDED_TOKEN)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda[:N] or mps")] = "auto",
    max_batch: Annotated[int, typer.Option(help="images per forward when requests arrive together")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="how long to wait for more requests to batch")] = 10.0,
    allow_url_host: Annotated[Optional[list[str]], typer.Option(
        help="host name, *.domain, * (any public host), IP or CIDR whose URLs may be fetched; repeatable. "
             "Loopback/private/link-local addresses need an IP/CIDR entry")] = None,
    label_studio_url: Annotated[Optional[str], typer.Option(
        help="Label Studio's address, for /data/... task images (default: $LABEL_STUDIO_URL)")] = None,
    max_body_mb: Annotated[float, typer.Option(help="largest request body")] = 20.0,
    fetch_timeout: Annotated[float, typer.Option(help="seconds for one image download")] = 10.0,
    request_timeout: Annotated[float, typer.Option(help="seconds one request may wait for the model")] = 300.0,
    warmup: Annotated[bool, typer.Option(help="load the models before accepting requests")] = True,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v info, -vv debug")] = 0,
) -> None:
    """Serve PIPELINE as a Label Studio ML backend (/health /setup /predict /webhook) and a
    REST API (POST /v1/annotate, GET /v1/pipelines, /openapi.json)."""
    from ..cli import _fail, _setup_logging, _warn_tiny

    _setup_logging(verbose)
    _warn_tiny()
    try:
        config = build_config(host=host, pipeline=pipeline, token_file=token_file, device=device,
                              max_batch=max_batch, max_wait_ms=max_wait_ms, allow_url_host=allow_url_host or [],
                              label_studio_url=label_studio_url, max_body_mb=max_body_mb,
                              fetch_timeout=fetch_timeout, request_timeout=request_timeout, warmup=warmup)
        import uvicorn

        from ..serve.app import create_app

        application = create_app(config)
    except RamGroundedError as exc:
        raise _fail(exc) from None
    except ImportError as exc:
        raise _fail(ConfigError(f"the server needs an optional dependency: {exc}",
                                hint="pip install 'ram-grounded[serve]'")) from None
    typer.secho(f"serving {application.state.backend.model_version} on http://{host}:{port} "
                f"({'token required' if config.token else 'no token: loopback only'})", err=True)
    uvicorn.run(application, host=host, port=port, log_level="info" if verbose else "warning",
                server_header=False, timeout_graceful_shutdown=5)


def build_config(*, host: str, pipeline: str, token_file: Path | None, device: str, max_batch: int,
                 max_wait_ms: float, allow_url_host: list[str], label_studio_url: str | None,
                 max_body_mb: float, fetch_timeout: float, request_timeout: float, warmup: bool):  # noqa: ANN201
    """Check the options and build a :class:`~ram_grounded.serve.ServeConfig` (ConfigError if unsafe)."""
    from ..serve.backend import ServeConfig
    from ..serve.security import is_loopback_host, load_token

    token = load_token(token_file)
    if token is None and not is_loopback_host(host):
        raise ConfigError(f"refusing to serve on {host!r} without a token",
                          hint="set RAM_GROUNDED_TOKEN or --token-file, or bind 127.0.0.1")
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {max_batch}", hint="e.g. --max-batch 8")
    config = ServeConfig(pipeline=pipeline, device=device, token=token, allow_url_hosts=tuple(allow_url_host),
                         max_batch=max_batch, max_wait=max_wait_ms / 1000.0,
                         max_body_bytes=int(max_body_mb * 1024 * 1024),
                         max_image_bytes=int(max_body_mb * 1024 * 1024), fetch_timeout=fetch_timeout,
                         request_timeout=request_timeout, warmup=warmup)
    if label_studio_url:
        config.label_studio_url = label_studio_url
    return config
