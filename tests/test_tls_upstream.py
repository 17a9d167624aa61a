"""HTTPS upstreams (SPEC section 11), against real TLS servers on 127.0.0.1 with certificates
from the test PKI: pooled keep-alive TLS connections, the CA, server_name, upstream mTLS, every
certificate or handshake failure a 502 `upstream_tls` that is never retried as plain HTTP,
insecure_skip_verify warned at start and reload, and certificate files re-read while running."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.fixtures.servers import base_config
from tests.fixtures.tls_servers import alerting_server, server_context


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A reload configures logging to the stderr of the moment (capfd's, closed after the
    test): put back what was there."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def tls_config(url: str, **tls: Any) -> dict[str, Any]:
    cfg = base_config(url)
    if tls:
        cfg["upstreams"]["api"]["tls"] = tls
    return cfg


async def get(url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
        body = await r.read()
        return r.status, orjson.loads(body) if body else {}


async def upstream_errors(admin_url: str, reason: str) -> float:
    """gateway_upstream_errors_total{upstream="api",reason=...} from /metrics."""
    async with aiohttp.ClientSession() as s, s.get(admin_url + "/metrics") as r:
        text = await r.text()
    found = [
        line
        for line in text.splitlines()
        if line.startswith("gateway_upstream_errors_total{")
        and f'reason="{reason}"' in line
        and 'upstream="api"' in line
    ]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def access_lines(gw: Any, capfd: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    gw.gateway.runtime.access.flush()
    out = capfd.readouterr().out
    return [orjson.loads(x) for x in out.splitlines() if x.startswith('{"event":"access"')]


async def test_https_upstream_keeps_tls_connections_alive(pki, tls_upstream, make_gateway):
    """Ten requests through an https:// upstream with the test CA: one TLS connection at the
    upstream, reused; SNI is not sent for an IP target (its IP address is verified)."""
    up = await tls_upstream(pki.server)
    gw = await make_gateway(tls_config(up.url, ca_file=pki.ca_file))
    async with aiohttp.ClientSession() as s:
        for i in range(10):
            async with s.get(f"{gw.url}/item/{i}") as r:
                assert r.status == 200
                body = await r.json()
                assert body["path"] == f"/item/{i}"
                assert body["forwarded_proto"] == "http"  # the client's side, not ours
    assert up.requests == 10
    assert up.connections == 1
    assert up.sni == [None]  # one handshake; an IP address is never sent as SNI
    pool = gw.gateway.runtime.pools["api"]
    assert pool.tls is not None


async def test_concurrent_requests_share_a_bounded_set_of_tls_connections(
    pki, tls_upstream, make_gateway
):
    """Concurrent requests open at most max_connections TLS connections, then reuse them."""
    up = await tls_upstream(pki.server)
    cfg = tls_config(up.url, ca_file=pki.ca_file)
    cfg["upstreams"]["api"]["max_connections"] = 3
    gw = await make_gateway(cfg)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> int:
            async with s.get(f"{gw.url}/c/{i}") as r:
                await r.read()
                return r.status

        for _ in range(3):
            assert await asyncio.gather(*(one(i) for i in range(12))) == [200] * 12
    assert up.requests == 36
    assert up.connections <= 3


async def test_plain_http_pool_has_no_tls(echo_upstream, make_gateway):
    """An http:// upstream does no TLS work: its pool has no context."""
    gw = await make_gateway(base_config(echo_upstream.url))
    assert gw.gateway.runtime.pools["api"].tls is None
    status, _ = await get(gw.url + "/x")
    assert status == 200


async def test_server_name_is_sent_and_verified(pki, tls_upstream, make_gateway):
    """`server_name` is the SNI and the verified name: an upstream whose certificate names
    only elsewhere.test is refused by default (the target is 127.0.0.1) and accepted with
    server_name: elsewhere.test."""
    up = await tls_upstream(pki.wrong_name)
    gw = await make_gateway(tls_config(up.url, ca_file=pki.ca_file))
    status, body = await get(gw.url + "/x")
    assert (status, body["error"]) == (502, "bad_gateway")
    assert up.requests == 0

    gw2 = await make_gateway(tls_config(up.url, ca_file=pki.ca_file, server_name="elsewhere.test"))
    status, body = await get(gw2.url + "/x")
    assert status == 200
    assert up.sni[-1] == "elsewhere.test"


async def test_host_name_target_sends_its_name_as_sni(pki, tls_upstream, make_gateway):
    """A target named by host name verifies and sends that name (localhost here)."""
    up = await tls_upstream(pki.server)
    gw = await make_gateway(tls_config(f"https://localhost:{up.port}", ca_file=pki.ca_file))
    status, _ = await get(gw.url + "/x")
    assert status == 200
    assert up.sni == ["localhost"]


async def test_upstream_mtls_presents_the_client_certificate(pki, tls_upstream, make_gateway):
    """An upstream that requires a client certificate gets ours (cert_file / key_file)."""
    up = await tls_upstream(pki.server, client_ca=pki.ca_file, require_client=True)
    gw = await make_gateway(
        tls_config(
            up.url,
            ca_file=pki.ca_file,
            cert_file=pki.client.cert_file,
            key_file=pki.client.key_file,
        )
    )
    status, body = await get(gw.url + "/x")
    assert status == 200
    assert body["client_subject"] == "organizationName=gateway tests,commonName=client.test"
    assert up.client_subjects == [body["client_subject"]]


async def test_upstream_refusing_our_missing_client_certificate_is_upstream_tls(
    pki, make_gateway, capfd
):
    """TLS 1.3: the upstream refuses a client without a certificate with an alert after the
    client's side of the handshake; the request is a 502 `upstream_tls`, not retried."""
    ctx = server_context(pki.server, client_ca=pki.ca_file, require_client=True)
    with alerting_server(ctx, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as srv:
        gw = await make_gateway(tls_config(f"https://127.0.0.1:{srv.port}", ca_file=pki.ca_file))
        status, body = await get(gw.url + "/x")
        assert (status, body["error"]) == (502, "bad_gateway")
        await asyncio.sleep(0.1)
        assert srv.handshakes == 0
        assert len(srv.failures) == 1  # one attempt, no retry
    [line] = access_lines(gw, capfd)
    assert line["reason"] == "upstream_tls"


FAILURES = ["unknown_ca", "wrong_name", "expired"]


@pytest.mark.parametrize("case", FAILURES)
async def test_unverifiable_upstream_certificate_is_502_upstream_tls(
    case, pki, tls_upstream, make_gateway, capfd
):
    """Unknown CA, wrong name, expired: 502 bad_gateway, reason upstream_tls in the access log
    and the metrics, logged once with the detail; the upstream never sees a request."""
    leaf = {"unknown_ca": pki.server, "wrong_name": pki.wrong_name, "expired": pki.expired}[case]
    up = await tls_upstream(leaf)
    ca = pki.other_ca_file if case == "unknown_ca" else pki.ca_file
    gw = await make_gateway(tls_config(up.url, ca_file=ca))
    with capture_logs() as logs:
        for _ in range(3):
            status, body = await get(gw.url + "/x")
            assert (status, body["error"]) == (502, "bad_gateway")
    assert up.requests == 0
    lines = access_lines(gw, capfd)
    assert [x["reason"] for x in lines] == ["upstream_tls"] * 3
    assert await upstream_errors(gw.admin_url, "upstream_tls") == 3
    failed = [e for e in logs if e["event"] == "upstream_tls_failed"]
    assert len(failed) == 1  # once per episode
    detail = failed[0]["detail"]
    expected = {
        "unknown_ca": "unable to get local issuer certificate",
        "wrong_name": "IP address mismatch",
        "expired": "certificate has expired",
    }[case]
    assert expected in detail


async def test_system_trust_store_by_default(pki, tls_upstream, make_gateway):
    """Without `tls`, an https:// upstream is verified against the system trust store: the
    test CA is not in it."""
    up = await tls_upstream(pki.server)
    gw = await make_gateway(base_config(up.url))
    status, _ = await get(gw.url + "/x")
    assert status == 502
    assert up.requests == 0


@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b""])
async def test_handshake_failure_is_upstream_tls_and_never_plain_http(
    answer, pki, make_gateway, capfd
):
    """A plain-TCP server on an https:// target (answering HTTP to the ClientHello, or
    closing): 502 upstream_tls; it only ever receives a TLS ClientHello, never a plain HTTP
    request, and each request makes one attempt."""
    received: list[bytes] = []

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway(tls_config(f"https://127.0.0.1:{port}", ca_file=pki.ca_file))
        for _ in range(2):
            status, body = await get(gw.url + "/plain?x=1")
            assert (status, body["error"]) == (502, "bad_gateway")
        await asyncio.sleep(0.1)
    finally:
        server.close()
    assert len(received) == 2  # one attempt per request: no retry of any kind
    for data in received:
        assert data[:1] == b"\x16"  # a TLS handshake record
        assert b"GET" not in data
        assert b"/plain" not in data
    assert [x["reason"] for x in access_lines(gw, capfd)] == ["upstream_tls"] * 2


async def test_failover_skips_a_target_whose_certificate_fails(pki, tls_upstream, make_gateway):
    """With two https targets, one with an expired certificate: every request is answered
    by the other (failover over TLS, never over plain HTTP)."""
    bad = await tls_upstream(pki.expired)
    good = await tls_upstream(pki.server)
    cfg = base_config(good.url)
    cfg["upstreams"]["api"] = {
        "targets": [bad.url, good.url],
        "tls": {"ca_file": pki.ca_file},
        "connect_timeout": "1s",
    }
    gw = await make_gateway(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            async with s.get(gw.url + "/x") as r:
                assert r.status == 200
    assert bad.requests == 0
    assert good.requests == 4


async def test_insecure_skip_verify_warns_at_start_and_at_every_reload(
    pki, tls_upstream, make_gateway, tmp_path, capfd
):
    """insecure_skip_verify accepts any certificate, and says so at start and at each reload
    (of a kept pool and of a rebuilt one)."""
    up = await tls_upstream(pki.stranger)  # an unrelated CA, a certificate without names
    cfg = tls_config(up.url, insecure_skip_verify=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with capture_logs() as logs:
        gw = await make_gateway(cfg, str(path))
    warned = [e for e in logs if e["event"] == "tls_verification_disabled"]
    assert [e["tls"] for e in warned] == ["upstreams.api.tls"]
    status, _ = await get(gw.url + "/x")
    assert status == 200

    capfd.readouterr()
    assert await gw.gateway.reload()  # SIGHUP, same file: the pool is kept
    assert _events(capfd, "tls_verification_disabled") == ["upstreams.api.tls"]

    cfg["upstreams"]["api"]["timeout"] = "4s"  # a changed upstream: a new pool
    path.write_text(yaml.safe_dump(cfg))
    assert await gw.gateway.reload()
    assert _events(capfd, "tls_verification_disabled") == ["upstreams.api.tls"]
    status, _ = await get(gw.url + "/x")
    assert status == 200


def _events(capfd: pytest.CaptureFixture[str], event: str) -> list[str]:
    """The `tls` field of the JSON event lines named `event` written since the last read."""
    captured = capfd.readouterr()
    found = []
    for text in (captured.err + captured.out).splitlines():
        if text.startswith("{") and f'"event":"{event}"' in text:
            found.append(orjson.loads(text)["tls"])
    return found


async def test_ca_file_swapped_while_running_is_used_by_new_connections(
    pki, tls_upstream, make_gateway, tmp_path
):
    """The CA file is re-read when its content changes (the config watcher, every 2 s):
    refused while it holds the wrong CA, accepted once the right one is written."""
    up = await tls_upstream(pki.server)
    ca = tmp_path / "upstream-ca.pem"
    shutil.copy(pki.other_ca_file, ca)
    cfg = tls_config(up.url, ca_file=str(ca))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    status, _ = await get(gw.url + "/x")
    assert status == 502

    swap = tmp_path / "new-ca.pem"
    shutil.copy(pki.ca_file, swap)
    swap.replace(ca)  # atomically, as a Secret update does
    for _ in range(40):
        await asyncio.sleep(0.25)
        status, _ = await get(gw.url + "/x")
        if status == 200:
            break
    assert status == 200
    assert up.requests == 1


async def test_client_certificate_reloaded_on_sighup_and_bad_files_refused(
    pki, tls_upstream, make_gateway, tmp_path
):
    """The client certificate files are re-read on reload: a broken key is refused (logged,
    the old certificate keeps serving), then a new valid pair is used by new connections."""
    up = await tls_upstream(pki.server, client_ca=pki.ca_file, require_client=True)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    shutil.copy(pki.client.cert_file, cert)
    shutil.copy(pki.client.key_file, key)
    cfg = tls_config(up.url, ca_file=pki.ca_file, cert_file=str(cert), key_file=str(key))
    cfg["upstreams"]["api"]["idle_timeout"] = "0.1s"  # connections do not outlive a request
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    status, body = await get(gw.url + "/x")
    assert body["client_subject"].endswith("commonName=client.test")

    key.write_text("not a key")
    pool = gw.gateway.runtime.pools["api"]
    with capture_logs() as logs:
        pool.refresh_tls()
    assert [e["event"] for e in logs] == ["tls_reload_refused"]

    await asyncio.sleep(1.5)  # the idle connection is gone
    status, body = await get(gw.url + "/x")
    assert status == 200
    assert body["client_subject"].endswith("commonName=client.test")

    other = pki.leaf("client-2", [], client=True)
    shutil.copy(other.cert_file, cert)
    shutil.copy(other.key_file, key)
    assert await gw.gateway.reload()  # SIGHUP
    await asyncio.sleep(1.5)
    status, body = await get(gw.url + "/x")
    assert status == 200
    assert body["client_subject"].endswith("commonName=client-2.test")


def _cfg(upstream: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": {"api": upstream},
        "routes": [{"name": "r", "path_prefix": "/", "upstream": "api", "auth": "public"}],
    }


def test_config_accepts_https_targets_and_tls(tmp_path: Path) -> None:
    """https:// targets, a default port of 443, and the tls block (paths made absolute)."""
    cfg = parse_config(
        _cfg(
            {
                "targets": ["https://a.internal", "https://b.internal:8443/api"],
                "tls": {"ca_file": "ca.pem", "server_name": "api.internal"},
            }
        ),
        env={},
        base_dir=tmp_path,
    )
    up = cfg.upstreams["api"]
    assert up.https
    assert up.tls is not None
    assert up.tls.ca_file == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        (
            {"targets": ["https://a:1", "http://b:2"]},
            "targets must be all http:// or all https://",
        ),
        ({"url": "http://a:1", "tls": {"ca_file": "/x"}}, "`tls` applies to https:// targets"),
        ({"url": "ftp://a:1"}, "must be an http:// or https:// URL"),
        (
            {"url": "https://a:1", "tls": {"cert_file": "/c"}},
            "give both `cert_file` and `key_file`",
        ),
    ],
)
def test_config_refuses_bad_upstream_tls(upstream: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(upstream), env={})
    assert message in str(err.value)
    assert "upstreams.api" in str(err.value)


async def test_upstream_tls_files_that_do_not_load_refuse_the_start_and_the_reload(
    pki, tls_upstream, make_gateway, tmp_path
):
    """A CA file that does not load is a config error at start, and a refused reload (the
    running config keeps serving)."""
    up = await tls_upstream(pki.server)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError) as err:
        await make_gateway(tls_config(up.url, ca_file=str(bad)))
    assert "upstreams.api.tls" in str(err.value)

    cfg = tls_config(up.url, ca_file=pki.ca_file)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    cfg["upstreams"]["api"]["tls"]["ca_file"] = str(bad)
    path.write_text(yaml.safe_dump(cfg))
    assert not await gw.gateway.reload()
    status, _ = await get(gw.url + "/x")
    assert status == 200


def test_tls_failures_are_told_apart_from_refusals() -> None:
    """Only errors of a connection that reached the target count as TLS failures."""
    from gateway.http import pool

    assert isinstance(ssl.SSLCertVerificationError(), pool._TLS_FAILURES)
    assert isinstance(ConnectionResetError(), pool._TLS_FAILURES)
    assert not isinstance(ConnectionRefusedError(), pool._TLS_FAILURES)
    assert not isinstance(OSError(113, "no route"), pool._TLS_FAILURES)


def test_serve_with_an_upstream_ca_that_does_not_load_exits_2(tmp_path: Path) -> None:
    """`gateway serve` with a TLS file that does not load: exit 2 and the key path, no
    traceback (like any config error)."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    cfg = tls_config("https://127.0.0.1:9", ca_file=str(bad))
    cfg["admin"] = None
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "upstreams.api.tls: cannot load TLS files" in done.stderr
    assert "Traceback" not in done.stderr


async def test_real_process_with_uvloop_reloads_upstream_tls_and_reuses_connections(
    pki, tls_upstream, gateway_process
):
    """`gateway serve` (uvloop, compiled build): an https upstream verified against the
    system store is a 502; after SIGHUP with `tls.ca_file`, requests pass over one reused TLS
    connection; a plain-TCP server on an https target is a 502 at once."""
    up = await tls_upstream(pki.server)
    gp = await gateway_process(up.url)
    status, body = await get(gp.url + "/x")
    assert (status, body["error"]) == (502, "bad_gateway")

    gp.config["upstreams"]["api"]["tls"] = {"ca_file": pki.ca_file}
    gp.write()
    assert gp.proc is not None
    gp.proc.send_signal(signal.SIGHUP)
    for _ in range(60):
        await asyncio.sleep(0.1)
        status, _ = await get(gp.url + "/x")
        if status == 200:
            break
    assert status == 200
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            async with s.get(f"{gp.url}/n/{i}") as r:
                assert r.status == 200
    assert up.connections == 1

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gp.config["upstreams"]["api"]["url"] = f"https://127.0.0.1:{port}"
        gp.write()
        gp.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        status, body = await get(gp.url + "/x")
        assert (status, body["error"]) == (502, "bad_gateway")
    finally:
        server.close()
    log = gp.log.read_text()
    assert "unable to get local issuer certificate" in log  # the first episode's detail
    assert "connection closed during the TLS handshake" in log  # uvloop's reset, told apart
