"""URL policy and token checks, unit level (DNS answers are faked: nothing leaves loopback)."""

from __future__ import annotations

import base64
import ipaddress
import socket

import pytest
from test_serve_fakes import fake_pipeline, image_server, png_bytes, run_uvicorn

from ram_grounded.errors import ConfigError
from ram_grounded.serve import security
from ram_grounded.serve.fetch import safe_fetch
from ram_grounded.serve.security import UrlPolicy, UrlRefused, is_loopback_host, token_matches


def fake_dns(monkeypatch, answers: dict[str, list[str]]) -> None:
    def getaddrinfo(host, port, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if host not in answers:
            raise socket.gaierror(f"unknown host {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(security.socket, "getaddrinfo", getaddrinfo)


def test_policy_checks_every_resolved_address(monkeypatch) -> None:
    fake_dns(monkeypatch, {"good.example": ["93.184.215.14"], "rebind.example": ["93.184.215.14", "10.0.0.7"],
                           "meta.example": ["169.254.169.254"], "cdn.images.example": ["93.184.215.15"]})
    policy = UrlPolicy.from_entries(["good.example", "rebind.example", "meta.example", "*.images.example"])
    assert policy.check("https://good.example/a.jpg")[1] == [ipaddress.ip_address("93.184.215.14")]
    assert policy.check("http://cdn.images.example/x")[1]
    for url, why in [("http://rebind.example/a", "10.0.0.7"), ("http://meta.example/", "169.254.169.254"),
                     ("http://other.example/", "allow-list"), ("ftp://good.example/a", "http"),
                     ("http://images.example.evil/", "allow-list"), ("http:///nohost", "no host")]:
        with pytest.raises(UrlRefused, match=why):
            policy.check(url)


def test_ip_and_cidr_entries_allow_private_ranges() -> None:
    policy = UrlPolicy.from_entries(["10.1.0.0/16", "127.0.0.1", "*"])
    assert policy.address_allowed(ipaddress.ip_address("10.1.2.3"))
    assert policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))  # v4-mapped v6 is the same host
    assert policy.address_allowed(ipaddress.ip_address("8.8.8.8"))
    for bad in ["10.2.0.1", "127.0.0.2", "169.254.169.254", "::1", "fe80::1", "::ffff:10.2.0.1", "0.0.0.0",
                "100.64.0.1", "224.0.0.1", "fd00::1"]:
        assert not policy.address_allowed(ipaddress.ip_address(bad)), bad
    with pytest.raises(ConfigError):
        UrlPolicy.from_entries(["http://example.com/"])


def test_tokens_and_loopback() -> None:
    assert token_matches("Bearer abc", "abc") and token_matches("bearer  abc ", "abc")
    assert token_matches("Basic " + base64.b64encode(b"user:abc").decode(), "abc")
    for header in [None, "", "Bearer", "Bearer abd", "Token abc", "Basic !!!", "Basic " + base64.b64encode(b"abc").decode()]:
        assert not token_matches(header, "abc"), header
    assert all(is_loopback_host(h) for h in ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"])
    assert not any(is_loopback_host(h) for h in ["0.0.0.0", "::", "192.168.0.2", "example.com"])


def test_fetch_follows_allowed_redirects_within_limits() -> None:
    data = png_bytes(10, 10)
    redirects = {"/r1": "/r2", "/r2": "/img.png", "/loop": "/loop"}
    with image_server({"/img.png": data}, redirects) as (base, hits):
        policy = UrlPolicy.from_entries(["127.0.0.1"], max_bytes=len(data))
        result = safe_fetch(base + "/r1", policy)
        assert result.body == data and result.redirects == [base + "/r2", base + "/img.png"]
        with pytest.raises(Exception, match="redirects"):
            safe_fetch(base + "/loop", policy)
        with pytest.raises(Exception, match="larger"):
            safe_fetch(base + "/img.png", UrlPolicy.from_entries(["127.0.0.1"], max_bytes=len(data) - 1))


def test_request_timeout_is_a_json_504() -> None:
    from test_serve_rest import TOKEN, call

    from ram_grounded.serve.app import create_app
    from ram_grounded.serve.backend import ServeConfig

    app = create_app(ServeConfig(token=TOKEN, request_timeout=0.2), pipeline=fake_pipeline(delay=1.0))
    with run_uvicorn(app) as base:
        boundary = "bnd"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
                + png_bytes(8, 8) + f"\r\n--{boundary}--\r\n".encode())
        status, out, _ = call(base, "POST", "/v1/annotate", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 504 and "time limit" in out["error"]


def test_label_studio_url_allows_exactly_its_origin_not_the_whole_host() -> None:
    from ram_grounded.serve.backend import ServeConfig, _policy

    policy = _policy(ServeConfig(label_studio_url="http://127.0.0.1:8080"))
    parts, addresses = policy.check("http://127.0.0.1:8080/data/upload/1/a.png")
    assert parts.port == 8080 and [str(a) for a in addresses] == ["127.0.0.1"]
    for other in ("http://127.0.0.1:5432/", "http://127.0.0.1/", "https://127.0.0.1:8080/", "http://10.0.0.1:8080/"):
        with pytest.raises(UrlRefused):
            policy.check(other)


def test_operator_token_goes_only_to_the_operators_label_studio() -> None:
    from ram_grounded.serve.backend import Backend, ServeConfig
    from ram_grounded.serve.labelstudio import ProjectInfo
    from ram_grounded.serve.ls_routes import _resolve

    backend = Backend.__new__(Backend)
    backend.config = ServeConfig(label_studio_url="http://127.0.0.1:8080", label_studio_token="secret")
    url, headers, _ = _resolve("/data/upload/a.png", backend, ProjectInfo(hostname=None))
    assert url == "http://127.0.0.1:8080/data/upload/a.png" and headers == {"Authorization": "Token secret"}
    # a /setup call naming another host gets no operator token
    url, headers, _ = _resolve("/data/upload/a.png", backend, ProjectInfo(hostname="http://evil.example:80"))
    assert url.startswith("http://evil.example") and headers == {}
