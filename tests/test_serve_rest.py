"""REST API over a real uvicorn on loopback: auth, SSRF refusals, size limits, batching."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_serve_fakes import FakeDetector, fake_box, fake_caption, fake_mask, fake_pipeline, \
    image_server, png_bytes, run_uvicorn

from ram_grounded.record import rle_to_mask
from ram_grounded.serve.app import create_app
from ram_grounded.serve.backend import ServeConfig

TOKEN = "test-token-0123456789abcdef"


def call(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         token: str | None = TOKEN, chunked: bool = False) -> tuple[int, dict, dict]:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=iter([body]) if chunked else body, headers=hdrs,
                 encode_chunked=chunked)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.getheader("Content-Type", "").startswith("application/json"), raw[:200]
    return resp.status, json.loads(raw), dict(resp.getheaders())


def post_json(base: str, obj: dict, **kw) -> tuple[int, dict, dict]:
    return call(base, "POST", "/v1/annotate", json.dumps(obj).encode(), {"Content-Type": "application/json"}, **kw)


def post_file(base: str, data: bytes, classes: str | None = None, **kw) -> tuple[int, dict, dict]:
    boundary = "testboundary7f3a"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="img.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"]
    if classes is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="classes"\r\n\r\n{classes}\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return call(base, "POST", "/v1/annotate", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, **kw)


@pytest.fixture(scope="module")
def server():
    config = ServeConfig(token=TOKEN, allow_url_hosts=("127.0.0.1",), max_body_bytes=300_000,
                         max_image_bytes=300_000, max_batch=8, max_wait=0.05)
    app = create_app(config, pipeline=fake_pipeline(delay=0.1))
    with run_uvicorn(app) as base:
        yield base, app.state.backend


@pytest.fixture(scope="module")
def open_server():
    """A server that fetches any public host (``*``) but no private address."""
    app = create_app(ServeConfig(token=TOKEN, allow_url_hosts=("*",)), pipeline=fake_pipeline())
    with run_uvicorn(app) as base:
        yield base


def check_record(out: dict, h: int, w: int, classes: list[str]) -> None:
    assert out["error"] is None
    assert out["meta"]["image_size"] == [h, w]
    assert out["caption"] == fake_caption(h, w)
    det = out["detections"]
    assert len(det["xyxy"]) == len(classes)
    assert det["data"].get("class_name", {"values": []})["values"] == classes
    for i, box in enumerate(det["xyxy"]):
        assert np.allclose(box, fake_box(i, h, w), atol=1e-3)
        assert np.array_equal(rle_to_mask(det["mask"][i]), fake_mask(i, h, w))


def test_health_is_public_everything_else_needs_the_token(server) -> None:
    base, _ = server
    status, body, _ = call(base, "GET", "/health", token=None)
    assert status == 200 and body["status"] == "UP"
    for method, path in [("GET", "/v1/pipelines"), ("GET", "/openapi.json"), ("POST", "/v1/annotate"),
                         ("POST", "/predict"), ("POST", "/setup")]:
        status, body, headers = call(base, method, path, b"{}", {"Content-Type": "application/json"}, token=None)
        assert status == 401 and "token" in body["error"], (path, body)
        assert headers.get("www-authenticate", "").startswith("Bearer")
        status, body, _ = call(base, method, path, b"{}", {"Content-Type": "application/json"}, token="wrong")
        assert status == 401
    status, body, _ = call(base, "GET", "/v1/pipelines")
    assert status == 200 and body["serving"]["name"] == "serve_test"
    status, schema, _ = call(base, "GET", "/openapi.json")
    assert status == 200 and "/v1/annotate" in schema["paths"]
    assert "multipart/form-data" in schema["paths"]["/v1/annotate"]["post"]["requestBody"]["content"]
    # Label Studio can only send basic auth: the token as the password works too
    basic = base64.b64encode(f"ls:{TOKEN}".encode()).decode()
    status, _, _ = call(base, "GET", "/v1/pipelines", headers={"Authorization": f"Basic {basic}"}, token=None)
    assert status == 200


def test_annotate_upload_and_allowed_url(server) -> None:
    base, _ = server
    status, out, _ = post_file(base, png_bytes(48, 64), classes="cat, dog")
    assert status == 200, out
    check_record(out, 48, 64, ["cat", "dog"])
    assert out["model_version"].startswith("serve_test@")
    with image_server({"/a.png": png_bytes(30, 50)}) as (img_base, hits):
        status, out, _ = post_json(base, {"url": f"{img_base}/a.png", "classes": ["tree"]})
    assert status == 200, out
    check_record(out, 30, 50, ["tree"])
    assert hits == ["/a.png"]


def test_ssrf_refused(server, open_server) -> None:
    base, _ = server
    redirects = {
        "/to-private": "http://10.0.0.1/a.png",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
        "/to-file": "file:///etc/passwd",
    }
    with image_server({"/a.png": png_bytes(20, 20)}, redirects) as (img_base, hits):
        port = urllib.parse.urlsplit(img_base).port
        redirects["/to-localhost-name"] = f"http://localhost:{port}/a.png"  # same server, by a name
        for path in ["/to-private", "/to-metadata", "/to-localhost-name", "/to-file"]:
            status, out, _ = post_json(base, {"url": img_base + path})
            assert status == 403, (path, out)
            assert "refused" in out["error"] or "allow-list" in out["error"] or "only http" in out["error"]
            assert "Traceback" not in json.dumps(out)
        # the open server (any public host) refuses loopback and link-local addresses outright
        for url in [f"http://127.0.0.1:{port}/a.png", f"http://localhost:{port}/a.png",
                    "http://169.254.169.254/latest/meta-data/", "http://[::1]:1/", "http://10.1.2.3/x.png",
                    f"http://2130706433:{port}/a.png"]:
            status, out, _ = post_json(open_server, {"url": url})
            assert status == 403, (url, out)
        assert hits.count("/a.png") == 0  # nothing refused was ever fetched
        assert sorted(hits) == ["/to-file", "/to-localhost-name", "/to-metadata", "/to-private"]
    status, out, _ = post_json(base, {"url": "file:///etc/passwd"})
    assert status == 403 and "http" in out["error"]


def test_oversize_bodies_refused(server) -> None:
    base, _ = server
    big = png_bytes(400, 400, seed=1)  # ~480 kB of noise, over the 300 kB limit
    assert len(big) > 300_000
    status, out, _ = post_file(base, big)
    assert status == 413 and "limit" in out["error"]
    status, out, _ = post_file(base, big, chunked=True)  # no Content-Length: counted while streaming
    assert status == 413 and "limit" in out["error"]
    with image_server({"/big.png": big}) as (img_base, _):
        status, out, _ = post_json(base, {"url": f"{img_base}/big.png"})
    assert status == 422 and "larger" in out["error"]


def test_bad_requests_are_json_errors(server) -> None:
    base, _ = server
    status, out, _ = call(base, "POST", "/v1/annotate", b"not json", {"Content-Type": "application/json"})
    assert status == 400 and "JSON" in out["error"]
    status, out, _ = call(base, "POST", "/v1/annotate", b"xx", {"Content-Type": "text/plain"})
    assert status == 400 and "content type" in out["error"]
    status, out, _ = post_file(base, b"definitely not an image")
    assert status == 422 and out["error"] and "hint" in out
    status, out, _ = call(base, "GET", "/nope")
    assert status == 404 and out["error"]


def test_sixteen_concurrent_clients_are_batched(server) -> None:
    base, backend = server
    FakeDetector.batch_sizes.clear()
    sizes = [(24 + 4 * i, 80 - 2 * i) for i in range(16)]
    classes = [["cat"], ["cat", "dog"], ["dog", "tree", "cat"], []]

    def client(i: int) -> tuple[int, dict]:
        h, w = sizes[i]
        status, out, _ = post_file(base, png_bytes(h, w, seed=i), classes=",".join(classes[i % 4]))
        return status, out

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(16)))
    for i, (status, out) in enumerate(answers):
        assert status == 200, out
        check_record(out, *sizes[i], classes[i % 4])
    assert sum(FakeDetector.batch_sizes) == 16
    assert max(FakeDetector.batch_sizes) > 1 and len(FakeDetector.batch_sizes) < 16


def test_a_failing_stage_is_a_json_500_without_a_traceback() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    from ram_grounded.pipeline import Pipeline
    from ram_grounded.registry import register_stage
    from ram_grounded.stages.base import Stage

    @register_stage
    @dataclass(eq=False)
    class Exploding(Stage):
        """Always fails."""

        name: ClassVar[str] = "serve_test_exploding"
        reads: ClassVar[frozenset[str]] = frozenset({"image"})
        writes: ClassVar[frozenset[str]] = frozenset({"caption"})

        def process(self, records):  # noqa: ANN001, ANN201
            raise ZeroDivisionError("division by zero in a stage")

    app = create_app(ServeConfig(token=TOKEN), pipeline=Pipeline([Exploding()], name="boom"))
    with run_uvicorn(app) as base:
        status, out, _ = post_file(base, png_bytes(8, 8))
    assert status == 500 and "division by zero" in out["error"] and out["record"]["meta"]["image_size"] == [8, 8]
    assert "Traceback" not in json.dumps(out)
