"""Forward-auth (decision) mode: the gateway judges what nginx / Traefik / Envoy describe."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from tests.fixtures.servers import base_config, free_port

CONFIG_DIR = Path(__file__).parent.parent / "config"

ROUTES = [
    {"name": "health", "path": "/healthz", "upstream": "api", "auth": "public"},
    {
        "name": "payments",
        "path_prefix": "/v1/payments",
        "upstream": "api",
        "grants": ["authorization_code"],
        "scopes": ["payments"],
    },
    {"name": "api", "path_prefix": "/v1", "upstream": "api"},
]


async def _decider(make_gateway, echo_upstream):
    cfg = base_config(
        echo_upstream.url, routes=ROUTES, forward_auth={"host": "127.0.0.1", "port": 0}
    )
    gw = await make_gateway(cfg)
    validator = gw.gateway.runtime.validator
    code = await validator.issue("authorization_code", "app", "alice", "payments")
    implicit = await validator.issue("implicit", "app", "bob", "payments")
    url = f"http://127.0.0.1:{gw.gateway.ports['forward_auth']}"
    return gw, url, code, implicit


@pytest.mark.parametrize(
    ("style", "token", "uri", "method", "status"),
    [
        ("nginx", "code", "/v1/payments/1", "POST", 200),
        ("nginx", "implicit", "/v1/payments/1", "GET", 403),
        ("nginx", None, "/v1/payments/1", "GET", 401),
        ("nginx", "bogus", "/v1/other", "GET", 401),
        ("nginx", None, "/healthz", "GET", 200),
        ("nginx", "code", "/nowhere", "GET", 404),
        ("traefik", "code", "/v1/payments/1?x=1", "PUT", 200),
        ("traefik", "implicit", "/v1/payments/1", "GET", 403),
        ("traefik", "implicit", "/v1/items", "GET", 200),
        ("traefik", None, "/v1/public/../payments/1", "GET", 401),
        ("traefik", "code", "/v1/a%2fb", "GET", 400),
    ],
    ids=[
        "nginx-code-ok",
        "nginx-implicit-code-only",
        "nginx-no-token",
        "nginx-bad-token",
        "nginx-public",
        "nginx-no-route",
        "traefik-code-ok",
        "traefik-implicit-code-only",
        "traefik-implicit-ok",
        "traefik-normalised",
        "traefik-unsafe-path",
    ],
)
async def test_decisions(make_gateway, echo_upstream, style, token, uri, method, status):
    """The decision listener answers like proxy mode would, and forwards nothing."""
    _, url, code, implicit = await _decider(make_gateway, echo_upstream)
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + {"code": code, "implicit": implicit}.get(
            token, token
        )
    if style == "nginx":
        headers |= {"X-Original-URI": uri, "X-Original-Method": method}
    else:
        headers |= {"X-Forwarded-Uri": uri, "X-Forwarded-Method": method, "X-Forwarded-Host": "api"}
    async with aiohttp.ClientSession() as s, s.get(url + "/auth", headers=headers) as r:
        assert r.status == status
        if status == 200 and token == "code":
            assert r.headers["X-Auth-Subject"] == "alice"
            assert r.headers["X-Auth-Grant"] == "authorization_code"
            assert r.headers["X-Auth-Scope"] == "payments"
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer ")
    assert echo_upstream.requests == 0


def _nginx_conf(tmp: Path, port: int, decider: int, app: int) -> Path:
    site = (CONFIG_DIR / "nginx-auth-request.conf").read_text()
    site = site.replace("127.0.0.1:9902", f"127.0.0.1:{decider}")
    site = site.replace("127.0.0.1:3000", f"127.0.0.1:{app}")
    site = site.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp}/body;\n"
        f" proxy_temp_path {tmp}/proxy;\n fastcgi_temp_path {tmp}/fcgi;\n"
        f" uwsgi_temp_path {tmp}/uwsgi;\n scgi_temp_path {tmp}/scgi;\n{site}\n}}\n"
    )
    return conf


async def test_nginx_auth_request_against_the_gateway(make_gateway, echo_upstream, tmp_path):
    """Real nginx with auth_request lets valid tokens through with identity headers, refuses others."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed (.ci/run installs nginx-light)")
    gw, _, code, implicit = await _decider(make_gateway, echo_upstream)
    port = free_port()
    conf = _nginx_conf(tmp_path, port, gw.gateway.ports["forward_auth"], echo_upstream.server.port)
    check = subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(base + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            bearer = {"Authorization": f"Bearer {code}", "X-Auth-Subject": "mallory"}
            async with s.get(base + "/v1/payments/9", headers=bearer) as r:
                assert r.status == 200
                seen = {k.lower(): v for k, v in (await r.json())["headers"]}
            assert seen["x-auth-subject"] == "alice"
            assert seen["x-auth-grant"] == "authorization_code"
            assert "authorization" not in seen
            before = echo_upstream.requests
            async with s.get(
                base + "/v1/payments/9", headers={"Authorization": f"Bearer {implicit}"}
            ) as r:
                assert r.status == 403
            async with s.get(base + "/v1/payments/9") as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
            assert echo_upstream.requests == before
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_forward_auth_example_config_is_valid():
    """config/forward-auth.yaml loads and enables the decision listener."""
    cfg = load_config(CONFIG_DIR / "forward-auth.yaml", env={})
    assert cfg.forward_auth is not None
    assert cfg.forward_auth.port == 9902
