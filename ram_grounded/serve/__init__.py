"""Labeling-tool backends: a Label Studio ML backend and a REST API in one ASGI app
(:func:`create_app`), and a CVAT nuclio function in ``serve/cvat/``.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart, label-studio-sdk).
"""

from ram_grounded.serve.backend import Backend, ServeConfig

__all__ = ["Backend", "ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - re-export without importing FastAPI eagerly
    """See :func:`ram_grounded.serve.app.create_app`."""
    from ram_grounded.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
