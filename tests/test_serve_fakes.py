"""Deterministic stand-in stages and servers shared by the serve tests.

The stages' outputs follow simple formulas (:func:`fake_box`, :func:`fake_tags`), so a
test can compute what a server must answer independently of the server code.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import supervision as sv
from PIL import Image

from ram_grounded.pipeline import Pipeline
from ram_grounded.record import Record, Tag
from ram_grounded.registry import register_stage
from ram_grounded.stages.base import Stage

TAGS = (("cat", 0.9), ("dog", 0.6), ("tree", 0.3))


def fake_tags() -> list[Tag]:
    """What FakeTagger writes on every image."""
    return [Tag(n, s) for n, s in TAGS]


def fake_caption(h: int, w: int) -> str:
    return f"a test image of {w} by {h} pixels"


def fake_box(i: int, h: int, w: int) -> tuple[float, float, float, float]:
    """Box of the i-th prompt class on an h x w image (xyxy pixels)."""
    x1 = w * (0.1 + 0.1 * i)
    y1 = h * (0.2 + 0.05 * i)
    return x1, y1, x1 + w * 0.3, y1 + h * 0.4


def fake_mask(i: int, h: int, w: int) -> np.ndarray:
    x1, y1, x2, y2 = fake_box(i, h, w)
    mask = np.zeros((h, w), dtype=bool)
    mask[int(y1):int(y2), int(x1):int(x2)] = True
    return mask


@register_stage
@dataclass(eq=False)
class FakeTagger(Stage):
    """Test tagger: the fixed TAGS and a caption naming the image size."""

    name: ClassVar[str] = "serve_test_tagger"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"tags", "caption"})

    def process(self, records: list[Record]) -> list[Record]:
        for r in records:
            r.tags = fake_tags()
            r.caption = fake_caption(*r.image.shape[:2])
        return records


@register_stage
@dataclass(eq=False)
class FakeDetector(Stage):
    """Test detector: one box + mask per prompt class at :func:`fake_box`; records batch sizes."""

    name: ClassVar[str] = "serve_test_detector"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "prompt"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections"})
    delay: float = 0.0
    batch_sizes: ClassVar[list[int]] = []

    def process(self, records: list[Record]) -> list[Record]:
        type(self).batch_sizes.append(len(records))
        time.sleep(self.delay)  # makes requests pile up so the queue has something to batch
        for r in records:
            h, w = r.image.shape[:2]
            n = len(r.prompt)
            if n == 0:
                r.detections = sv.Detections.empty()
                continue
            r.detections = sv.Detections(
                xyxy=np.array([fake_box(i, h, w) for i in range(n)], dtype=np.float32),
                confidence=np.array([0.9 - 0.1 * i for i in range(n)], dtype=np.float32),
                class_id=np.arange(n),
                mask=np.stack([fake_mask(i, h, w) for i in range(n)]),
                data={"class_name": np.array(r.prompt, dtype=object)},
            )
        return records


def fake_pipeline(delay: float = 0.0) -> Pipeline:
    """tagger -> detector, with ``prompt`` supplied by the caller (the server's classes)."""
    return Pipeline([FakeTagger(), FakeDetector(delay=delay)], inputs=["prompt"], name="serve_test")


def png_bytes(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_uvicorn(app, port: int | None = None, timeout: float = 60.0):  # noqa: ANN001
    """Serve ``app`` on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def image_server(files: dict[str, bytes], redirects: dict[str, str] | None = None,
                 auth_log: list[tuple[str, str | None]] | None = None):
    """A loopback HTTP server: ``files`` by path, ``redirects`` path -> Location (302);
    ``auth_log`` collects (path, Authorization header) of every request."""
    redirects = redirects if redirects is not None else {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            if auth_log is not None:
                auth_log.append((self.path, self.headers.get("Authorization")))
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.end_headers()
                return
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_fake_stages_follow_their_formulas() -> None:
    rec = fake_pipeline()(Record(image=np.zeros((40, 60, 3), np.uint8), prompt=["a", "b"]))
    assert rec.ok, rec.error
    assert np.allclose(rec.detections.xyxy[1], fake_box(1, 40, 60))
    assert rec.detections.mask[0].sum() == fake_mask(0, 40, 60).sum() > 0
    assert [t.name for t in rec.tags] == [n for n, _ in TAGS]
