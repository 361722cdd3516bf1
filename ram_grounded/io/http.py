"""Bounded HTTP(S) downloads with the standard library (no extra dependency).

Only ``http`` and ``https`` are ever fetched: the opener is built without urllib's
file/ftp/data handlers, and redirects to any other scheme are refused.  A download is
limited in size (``max_bytes``, checked against Content-Length and while streaming) and
in time (``timeout`` per socket operation and for the whole body).
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ram_grounded.errors import ImageLoadError

logger = logging.getLogger(__name__)

ALLOWED_SCHEMES = frozenset({"http", "https"})
_CHUNK = 64 * 1024
_USER_AGENT = "ram-grounded (image loader)"
# "scheme://..." or "data:..." counts as a URL; a Windows drive ("C:\\x") does not.
_URL_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]+://|data:)")


def looks_like_url(text: str) -> bool:
    """True for ``scheme://...`` and ``data:...`` strings (whatever the scheme)."""
    return bool(_URL_RE.match(text.strip()))


def url_scheme(text: str) -> str:
    """The lower-cased scheme of a URL-like string."""
    return text.strip().split(":", 1)[0].lower()


def redact_url(url: str) -> str:
    """The URL without ``user:password@`` so it can be logged or stored in a Record."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> None:
    """Raise :class:`ImageLoadError` unless ``url`` is an http(s) URL."""
    scheme = url_scheme(url)
    if scheme not in ALLOWED_SCHEMES:
        raise ImageLoadError(
            f"{describe_url(url)}: the URL scheme {scheme!r} is not allowed",
            hint="only http:// and https:// URLs are fetched; pass a local path, bytes or "
            "an array for anything else",
        )


def describe_url(url: str, limit: int = 120) -> str:
    """A short printable form of a URL (credentials removed, long data: URLs cut)."""
    text = redact_url(url.strip()) if not url.startswith("data:") else url.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s); urllib alone would also follow one to ftp://."""

    max_redirections = 5

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        target = urllib.parse.urljoin(req.full_url, headers.get("Location", ""))
        if url_scheme(target) not in ALLOWED_SCHEMES:
            raise ImageLoadError(
                f"{describe_url(req.full_url)}: redirected to a {url_scheme(target)!r} URL",
                hint="only http:// and https:// are followed; use the final image URL directly",
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener() -> urllib.request.OpenerDirector:
    # Built by hand rather than with build_opener(), which would add file:, ftp: and data:
    # handlers. ProxyHandler() reads the *_proxy / no_proxy environment at each call.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _too_large(url: str, max_bytes: int) -> ImageLoadError:
    return ImageLoadError(
        f"{describe_url(url)}: the download is larger than max_bytes={max_bytes}",
        hint="raise max_bytes if this image is expected to be that large",
    )


def fetch_bytes(url: str, *, timeout: float = 10.0, max_bytes: int) -> bytes:
    """Download ``url`` (http/https only) and return its body.

    The body is read in chunks and the download stops as soon as it passes ``max_bytes``.
    ``timeout`` bounds each socket operation and, checked between chunks, the whole body.
    Every failure is an :class:`ImageLoadError` naming the URL.
    """
    check_url(url)
    name = describe_url(url)
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with _opener().open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise _too_large(url, max_bytes)
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(_CHUNK):  # read1: whatever has arrived
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(url, max_bytes)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"took longer than {timeout} s")
                chunks.append(chunk)
    except ImageLoadError:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageLoadError(
            f"{name}: the server answered HTTP {exc.code} {exc.reason}",
            hint="check the URL in a browser; the image may have moved or need a login",
        ) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise ImageLoadError(
            f"{name}: the download failed ({reason})",
            hint=f"check the network and the URL; the limit is timeout={timeout} s",
        ) from exc
    logger.debug("downloaded %s (%d bytes)", name, size)
    return b"".join(chunks)
