"""load_image / describe_source: every input kind, every PIL mode, and a bad-input corpus
built here in tmp_path. HTTP runs against a loopback server in a thread."""

from __future__ import annotations

import http.server
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ram_grounded.errors import ImageLoadError
from ram_grounded.io import DEFAULT_MAX_PIXELS, describe_source, load_image


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: pixels never decodable."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _assert_rgb8(out: np.ndarray, h: int, w: int) -> None:
    assert out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags.c_contiguous


# ---------------------------------------------------------------- files, bytes, PIL


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif"),
                                        ("WEBP", ".webp")])
def test_lossless_file_roundtrip(tmp_path: Path, fmt: str, suffix: str) -> None:
    pixels = _noise()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()),
                   memoryview(path.read_bytes())):
        out = load_image(source)
        _assert_rgb8(out, 48, 64)
        np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("orientation,k", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, k: int) -> None:
    # Four flat quadrants, so every rotation is distinguishable despite JPEG loss.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:20, :30] = (255, 0, 0)
    stored[:20, 30:] = (0, 255, 0)
    stored[20:, :30] = (0, 0, 255)
    stored[20:, 30:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rot{orientation}.jpg"
    Image.fromarray(stored).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    expected = np.rot90(stored, k=k)  # independent: numpy rotation (k>0 = counter-clockwise)
    for out in (load_image(path), load_image(Image.open(path))):
        assert out.shape == expected.shape
        assert np.abs(out.astype(int) - expected).mean() < 8


def test_pil_modes_convert_with_independent_expectations() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = _noise(3, 4)
    cases: list[tuple[Image.Image, np.ndarray]] = [
        (Image.fromarray(grey, "L"), np.dstack([grey] * 3)),
        (Image.fromarray(np.dstack([grey, 255 - grey]), "LA"), np.dstack([grey] * 3)),
        # Alpha is dropped, not composited: fully transparent pixels keep their colour.
        (Image.fromarray(np.dstack([rgb, np.zeros((3, 4), np.uint8)]), "RGBA"), rgb),
        (Image.fromarray(grey > 100).convert("1"), np.dstack([(grey > 100) * 255] * 3)),
        (Image.fromarray(np.full((3, 4, 3), 128, np.uint8), "YCbCr"), np.full((3, 4, 3), 128)),
    ]
    cmyk = np.dstack([rgb, np.zeros((3, 4), np.uint8)])  # K=0: RGB = 255 - CMY
    cases.append((Image.fromarray(cmyk, "CMYK"), 255 - rgb))
    for image, expected in cases:
        out = load_image(image)
        _assert_rgb8(out, 3, 4)
        assert np.abs(out.astype(int) - expected).max() <= 1, image.mode


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_images(tmp_path: Path, transparency: bool) -> None:
    palette = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
    index = np.random.default_rng(2).integers(0, 256, (5, 7), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.tobytes())
    kw = {"transparency": int(index[0, 0])} if transparency else {}
    path = tmp_path / "p.png"
    image.save(path, **kw)
    assert Image.open(path).mode == "P"
    assert ("transparency" in Image.open(path).info) == transparency
    np.testing.assert_array_equal(load_image(path), palette[index])


def test_sixteen_and_thirtytwo_bit_modes_are_scaled_not_clipped(tmp_path: Path) -> None:
    values16 = np.array([[0, 255, 256, 0x8000], [0x80FF, 0xFF00, 0xFFFF, 1000]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = np.dstack([values16 >> 8] * 3)
    np.testing.assert_array_equal(load_image(path), expected)
    # Mode I (int32): 16-bit range scaled, 8-bit range kept.
    np.testing.assert_array_equal(load_image(Image.fromarray(values16.astype(np.int32))), expected)
    small = np.array([[0, 7], [200, 255]], np.int32)
    np.testing.assert_array_equal(load_image(Image.fromarray(small))[..., 0], small)
    f = Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], np.float32))
    assert f.mode == "F"
    np.testing.assert_array_equal(load_image(f)[..., 0], [[0, 128], [255, 255]])


def test_cmyk_jpeg_and_tiff_files(tmp_path: Path) -> None:
    rgb = _noise(16, 16)
    cmyk = Image.fromarray(np.dstack([rgb, np.zeros((16, 16), np.uint8)]), "CMYK")
    cmyk.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif"), 255 - rgb)
    flat = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    flat.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 3


# ------------------------------------------------------------------------- ndarrays


def test_ndarray_shapes_and_dtypes() -> None:
    rgb = _noise(5, 6)
    grey = rgb[..., 0].copy()
    assert load_image(rgb) is rgb  # already right: not copied
    np.testing.assert_array_equal(load_image(grey), np.dstack([grey] * 3))
    np.testing.assert_array_equal(load_image(grey[..., None]), np.dstack([grey] * 3))
    rgba = np.dstack([rgb, np.full((5, 6), 7, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.uint16) * 257), rgb)  # v*257 >> 8 == v
    np.testing.assert_array_equal(load_image((rgb.astype(np.uint16) * 257).astype(">u2")), rgb)
    for dtype in (np.float16, np.float32, np.float64):
        out = load_image((rgb / 255.0).astype(dtype))
        assert np.abs(out.astype(int) - rgb).max() <= 1
    floats = np.array([[-0.5, 0.5], [1.5, np.nan]], np.float32)
    np.testing.assert_array_equal(load_image(floats)[..., 0], [[0, 128], [255, 0]])
    np.testing.assert_array_equal(load_image(np.array([[True, False]]))[..., 0], [[255, 0]])
    np.testing.assert_array_equal(load_image(rgb.astype(np.int64)), rgb)
    view = np.ascontiguousarray(rgb.transpose(1, 0, 2)).transpose(1, 0, 2)  # non-contiguous
    assert not view.flags.c_contiguous
    out = load_image(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("array,words", [
    (np.zeros((3, 8, 8), np.uint8), "shape"),       # CHW
    (np.zeros(10, np.uint8), "shape"),
    (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.full((2, 2), -1, np.int32), "do not fit"),
    (np.full((2, 2), 70000, np.int32), "do not fit"),
    (np.zeros((2, 2), np.complex64), "dtype"),
])
def test_bad_arrays(array: np.ndarray, words: str) -> None:
    with pytest.raises(ImageLoadError, match=words) as info:
        load_image(array)
    assert describe_source(array) in str(info.value)


# ---------------------------------------------------------------- bad-input corpus


def test_truncated_images_load_is_not_enabled() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_fail(tmp_path: Path, fmt: str) -> None:
    data = _encode(Image.fromarray(_noise(128, 128)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageLoadError, match="corrupt or truncated") as info:
            load_image(source)
        assert info.value.hint
    assert str(path) in str(pytest.raises(ImageLoadError, load_image, path).value)


def test_empty_missing_directory_and_non_image(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG\n")
    cases = [(empty, "empty"), (tmp_path / "missing.png", "no such file"),
             (tmp_path, "directory"), (text, "not an image")]
    for path, words in cases:
        with pytest.raises(ImageLoadError, match=words) as info:
            load_image(path)
        assert str(path) in str(info.value) and info.value.hint
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="cannot load an image from a int"):
        load_image(42)  # type: ignore[arg-type]


def test_bomb_guard_checks_header_before_decoding(tmp_path: Path) -> None:
    # 9000x9000 is over our default but under PIL's limit: refused by our header check,
    # which proves the pixels were never decoded (this file has no decodable pixels).
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(9000, 9000))
    assert 9000 * 9000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageLoadError, match="max_pixels") as info:
        load_image(path)
    assert str(path) in str(info.value)
    # With the guard lifted the same file gets as far as decoding, and fails there.
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(path, max_pixels=None)
    # PIL's own guard (a warning past MAX_IMAGE_PIXELS, an error past twice that) is ours too.
    for side in (10_000, 100_000):
        with pytest.raises(ImageLoadError, match="decompression-bomb"):
            load_image(_png_header_only(side, side), max_pixels=None)
    # The limit is configurable and applies to every kind of source.
    small = _noise(10, 10)
    for source in (small, Image.fromarray(small), _encode(Image.fromarray(small), "PNG")):
        with pytest.raises(ImageLoadError, match="max_pixels=99"):
            load_image(source, max_pixels=99)
        assert load_image(source, max_pixels=100).shape == (10, 10, 3)


def test_describe_source() -> None:
    data = b"abc"
    assert describe_source("some/dir/a.jpg") == "some/dir/a.jpg"
    assert describe_source(Path("some/dir/a.jpg")) == str(Path("some/dir/a.jpg"))
    assert describe_source(data) == "<bytes sha1:a9993e364706 n=3>"  # sha1("abc") = a9993e...
    assert describe_source(data) == describe_source(bytearray(data))
    assert describe_source(np.zeros((2, 3, 4), np.float32)) == "<array 2x3x4 float32>"
    assert describe_source(Image.new("LA", (5, 2))) == "<PIL LA 5x2>"
    assert describe_source("https://user:pw@example.org/a.jpg") == "https://example.org/a.jpg"
    assert len(describe_source("data:image/png;base64," + "A" * 1000)) <= 120


# ---------------------------------------------------------------------------- HTTP

_IMAGE = _noise(12, 10, seed=5)
_PNG = _encode(Image.fromarray(_IMAGE), "PNG")


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, length: int | None = None, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose

    def _route(self) -> None:
        path = self.path
        if path == "/img.png":
            self._send(200, _PNG, Content_Type="image/png")
        elif path == "/big-declared":
            self._send(200, b"x" * 100, length=10_000_000)
        elif path == "/big-streamed":  # no Content-Length: body ends when the connection does
            self.send_response(200)
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"x" * 65536)
        elif path == "/slow":
            time.sleep(3)
            self._send(200, _PNG)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif path.startswith("/redirect"):
            target = {"/redirect": "/img.png", "/redirect-ftp": "ftp://127.0.0.1/img.png",
                      "/redirect-file": "file:///etc/passwd"}[path]
            self._send(302, b"", Location=target)
        elif path == "/text":
            self._send(200, b"<html>not an image</html>", Content_Type="text/html")
        else:
            self._send(404, b"nope")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_http_image_and_redirect(server: str) -> None:
    np.testing.assert_array_equal(load_image(f"{server}/img.png"), _IMAGE)
    np.testing.assert_array_equal(load_image(f"{server}/redirect"), _IMAGE)
    assert describe_source(f"{server}/img.png") == f"{server}/img.png"


def test_http_size_limits(server: str) -> None:
    assert load_image(f"{server}/img.png", max_bytes=len(_PNG)).shape == (12, 10, 3)
    with pytest.raises(ImageLoadError, match=f"max_bytes={len(_PNG) - 1}"):
        load_image(f"{server}/img.png", max_bytes=len(_PNG) - 1)
    with pytest.raises(ImageLoadError, match="max_bytes=1000000"):
        load_image(f"{server}/big-declared", max_bytes=1_000_000)
    with pytest.raises(ImageLoadError, match="max_bytes=100000"):
        load_image(f"{server}/big-streamed", max_bytes=100_000)


@pytest.mark.parametrize("route", ["/slow", "/trickle"])
def test_http_time_limit(server: str, route: str) -> None:
    start = time.monotonic()
    with pytest.raises(ImageLoadError, match="download failed") as info:
        load_image(server + route, timeout=0.5)
    assert time.monotonic() - start < 2.0
    assert server + route in str(info.value)


def test_http_errors(server: str) -> None:
    with pytest.raises(ImageLoadError, match="HTTP 404"):
        load_image(f"{server}/missing.png")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(f"{server}/text")
    for route, scheme in (("/redirect-ftp", "ftp"), ("/redirect-file", "file")):
        with pytest.raises(ImageLoadError, match=f"redirected to a '{scheme}' URL"):
            load_image(server + route)


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://127.0.0.1/a.png", "FTP://127.0.0.1/a.png",
    "data:image/png;base64,iVBORw0KGgo=", "gopher://127.0.0.1/", "ssh://127.0.0.1/x.png",
])
def test_other_schemes_refused(url: str) -> None:
    with pytest.raises(ImageLoadError, match="is not allowed") as info:
        load_image(url)
    assert "http://" in (info.value.hint or "")
