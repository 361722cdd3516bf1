"""Security for the servers: bearer tokens and SSRF-safe URL fetching.

URL policy (what ``--allow-url-host`` entries mean):

- Only ``http`` and ``https`` URLs are fetched, and only when the host matches an entry:
  a host name (``images.example.com``), a wildcard (``*.example.com``, or ``*`` for any
  host), or an IP address / CIDR range (``10.0.0.0/8``, ``127.0.0.1``).
- Every address a host name resolves to is checked **after DNS resolution**: loopback,
  private, link-local (e.g. the cloud metadata address 169.254.169.254), multicast and
  reserved addresses are refused unless an IP/CIDR entry covers them. The connection
  then goes to the checked address itself, so a second DNS answer cannot swap it.
- :func:`ram_grounded.serve.fetch.safe_fetch` follows redirects by hand, checking each
  hop again, and limits the body in size and the download in time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import os
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ImageLoadError

logger = logging.getLogger(__name__)

TOKEN_ENV = "RAM_GROUNDED_TOKEN"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ImageLoadError):
    """A URL was refused by the policy (scheme, host, address); nothing was fetched."""


# ------------------------------------------------------------------------ tokens
def load_token(token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The server token: from ``token_file`` if given, else ``$RAM_GROUNDED_TOKEN``, else None."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {str(path)!r}: {exc.strerror}",
                              hint="give a readable file holding one token line") from None
        if not token:
            raise ConfigError(f"the token file {str(path)!r} is empty", hint="write a long random token into it")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def token_matches(authorization: str | None, token: str) -> bool:
    """True when an ``Authorization`` header carries ``token``.

    ``Bearer <token>`` is the normal form; ``Basic base64(user:<token>)`` (any user name)
    is accepted too because Label Studio can only send basic auth to an ML backend.
    """
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        given = value.strip()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def is_loopback_host(host: str) -> bool:
    """True for loopback bind addresses: 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -------------------------------------------------------------------- URL policy
def _special(addr: IPAddress) -> bool:
    """Addresses no server should reach on a user's behalf without being told to."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (addr.is_loopback or addr.is_private or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified or not addr.is_global)


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs may be fetched (see the module docstring for the rules)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    # exact (scheme, host, port) origins allowed whatever their address, e.g. the operator's
    # own Label Studio on loopback: only that port, not every service on the machine
    origins: frozenset[str] = frozenset()  # "scheme://host:port", see origin_of

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, max_bytes: int = 20 * 1024 * 1024,
                     timeout: float = 10.0) -> UrlPolicy:
        """Build from ``--allow-url-host`` entries (host names, ``*.domain``, ``*``, IPs, CIDRs)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or ":" in entry or " " in entry:
                raise ConfigError(f"--allow-url-host {raw!r} is neither a host name nor an IP/CIDR",
                                  hint="e.g. images.example.com, *.example.com, 10.0.0.0/8 (no port, no scheme)")
            hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks), max_bytes, timeout)

    def host_listed(self, host: str) -> bool:
        """True when ``host`` (a name or an IP literal) matches an entry."""
        host = host.lower().strip("[]").rstrip(".")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = None
        if addr is not None:
            return "*" in self.hosts or any(addr in net for net in self.networks)
        if host in self.hosts or "*" in self.hosts:
            return True
        return any(h.startswith("*.") and host.endswith(h[1:]) for h in self.hosts)

    def address_allowed(self, addr: IPAddress) -> bool:
        """Public addresses are allowed; special ones only when an IP/CIDR entry covers them."""
        if any(addr in net for net in self.networks):
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            if any(addr.ipv4_mapped in net for net in self.networks):
                return True
        return not _special(addr)

    def check(self, url: str) -> tuple[urllib.parse.SplitResult, list[IPAddress]]:
        """Parse, match and resolve ``url``; raise :class:`UrlRefused` or return the addresses."""
        parts = urllib.parse.urlsplit(url.strip())
        shown = _shown(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise UrlRefused(f"{shown}: only http(s) URLs are fetched", hint="upload the image instead")
        host = parts.hostname
        if not host:
            raise UrlRefused(f"{shown}: the URL has no host", hint="give an absolute http(s) URL")
        if _origin(parts) in self.origins:
            return parts, _resolve(host, parts.port or (443 if parts.scheme.lower() == "https" else 80), shown)
        if not self.host_listed(host):
            raise UrlRefused(f"{shown}: the host {host!r} is not in the server's allow-list",
                             hint="start the server with --allow-url-host HOST, or upload the image")
        addresses = _resolve(host, parts.port or (443 if parts.scheme.lower() == "https" else 80), shown)
        bad = [a for a in addresses if not self.address_allowed(a)]
        if bad:
            raise UrlRefused(f"{shown}: {host!r} resolves to a loopback, private, link-local or reserved "
                             f"address ({bad[0]}), which is refused",
                             hint="allow that network explicitly with --allow-url-host <IP or CIDR>")
        return parts, addresses


def _origin(parts: urllib.parse.SplitResult) -> str:
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url`` (default ports made explicit)."""
    return _origin(urllib.parse.urlsplit(url.strip()))


def _shown(url: str, limit: int = 120) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.username or parts.password:  # never echo credentials
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url if len(url) <= limit else url[: limit - 3] + "..."


def _resolve(host: str, port: int, shown: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageLoadError(f"{shown}: cannot resolve {host!r} ({exc})", hint="check the host name") from None
    out: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if addr not in out:
            out.append(addr)
    if not out:
        raise ImageLoadError(f"{shown}: {host!r} has no address", hint="check the host name")
    return out
