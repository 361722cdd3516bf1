"""SSRF-safe HTTP(S) GET under a :class:`~ram_grounded.serve.security.UrlPolicy`.

Each hop (the URL and every redirect, at most :data:`MAX_REDIRECTS`) is checked by the
policy, then fetched from the very address that was checked, so a second DNS answer
cannot swap it; proxies from the environment are not used. The body is limited in size
(Content-Length and while streaming) and the whole download in time. Headers such as a
Label Studio token go only to the origin they were meant for.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field

from ..errors import ImageLoadError
from .security import IPAddress, UrlPolicy, _origin, _shown

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_USER_AGENT = "ram-grounded (server)"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an already checked address while sending the URL's Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, verifying the certificate for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass
class FetchResult:
    """A fetched body and the URL it finally came from."""

    body: bytes
    url: str
    content_type: str | None = None
    redirects: list[str] = field(default_factory=list)


def safe_fetch(url: str, policy: UrlPolicy, *, headers: dict[str, str] | None = None,
               header_origin: str | None = None) -> FetchResult:
    """GET ``url`` under ``policy``; every hop checked, body and time bounded.

    ``headers`` (e.g. a Label Studio token) are sent only to ``header_origin``
    (``scheme://host:port``), never to a host a redirect leads to.
    """
    deadline = time.monotonic() + policy.timeout
    redirects: list[str] = []
    current = url.strip()
    for _ in range(MAX_REDIRECTS + 1):
        parts, addresses = policy.check(current)
        extra = headers if headers and header_origin and _origin(parts) == header_origin else {}
        status, location, body, ctype = _get_once(parts, addresses[0], extra, policy, deadline, current)
        if location is None:
            if status >= 400:
                raise ImageLoadError(f"{_shown(current)}: the server answered HTTP {status}",
                                     hint="check the URL and that the image is reachable")
            return FetchResult(body, current, ctype, redirects)
        nxt = urllib.parse.urljoin(current, location)
        logger.debug("redirect %s -> %s", _shown(current), _shown(nxt))
        redirects.append(nxt)
        current = nxt
    raise ImageLoadError(f"{_shown(url)}: more than {MAX_REDIRECTS} redirects", hint="give the final image URL")


def _get_once(parts: urllib.parse.SplitResult, address: IPAddress, headers: dict[str, str],
              policy: UrlPolicy, deadline: float, shown_url: str) -> tuple[int, str | None, bytes, str | None]:
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    remaining = max(0.1, deadline - time.monotonic())
    conn_cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = conn_cls(parts.hostname or "", port, str(address), min(remaining, policy.timeout))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    shown = _shown(shown_url)
    try:
        conn.request("GET", path, headers={"User-Agent": _USER_AGENT, **headers})
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            if not location:
                raise ImageLoadError(f"{shown}: redirect without a Location", hint="give the final image URL")
            return response.status, location, b"", None
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > policy.max_bytes:
            raise _too_large(shown, policy.max_bytes)
        chunks, size = [], 0
        while chunk := response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK):
            size += len(chunk)
            if size > policy.max_bytes:
                raise _too_large(shown, policy.max_bytes)
            if time.monotonic() > deadline:
                raise ImageLoadError(f"{shown}: the download took longer than {policy.timeout} s",
                                     hint="use a faster source or upload the image")
            chunks.append(chunk)
        return response.status, None, b"".join(chunks), response.getheader("Content-Type")
    except ImageLoadError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise ImageLoadError(f"{shown}: the download failed ({exc})",
                             hint=f"check the URL; the time limit is {policy.timeout} s") from None
    finally:
        conn.close()


def _too_large(shown: str, limit: int) -> ImageLoadError:
    return ImageLoadError(f"{shown}: the image is larger than the server's limit of {limit} bytes",
                          hint="send a smaller image")
