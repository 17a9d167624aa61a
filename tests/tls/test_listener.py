"""TLS on the gateway's listeners (SPEC section 11), with real certificates and real TLS clients
on 127.0.0.1, under asyncio's loop and uvloop: HTTPS proxying, X-Forwarded-Proto,
client certificates and X-Forwarded-Client-Cert, the forward-auth and admin listeners over TLS,
and what an attacker sees (plain HTTP to the TLS port, TLS to a plain port, renegotiation,
handshakes that never finish)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import shutil
import ssl
import subprocess
import time
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import parse_config
from gateway.serve import Gateway
from gateway.upstream_headers import client_cert_element
from tests.fixtures.pki import Issued, Pki
from tests.fixtures.servers import base_config, raw_exchange
from tests.tls.client import TlsClient, client_hello, one_request, trusting

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
XFCC = "x-forwarded-client-cert"
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)


def tls(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": pki.server.cert_file, "key_file": pki.server.key_file, **extra}


def tls_config(upstream: str, pki: Pki, tls_extra: dict[str, Any] | None = None, **kw: Any):
    listen = {"host": "127.0.0.1", "port": 0, "tls": tls(pki, **(tls_extra or {}))}
    return base_config(upstream, listen=listen, **kw)


def expected_element(cert: Issued) -> str:
    """Envoy's XFCC element, computed here from the certificate itself."""
    digest = hashlib.sha256(cert.der).hexdigest()
    return f'Hash={digest};Subject="{cert.cert.subject.rfc4514_string()}"'


def mtls(pki: Pki, auth: str = "optional") -> dict[str, Any]:
    return {"client_ca_file": pki.ca_file, "client_auth": auth}


# ---------------------------------------------------------------------------- proxying over TLS


async def test_https_get_post_keepalive_and_chunked(echo_upstream, make_gateway, pki):
    """On one TLS connection: a GET, a POST with a body, a chunked upload and a chunked answer,
    in turn (the connection is reused), each relayed as over plain HTTP."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki))
    assert gw.gateway.ctx is not None and gw.gateway.ctx.scheme == "https"
    client = await TlsClient.open(gw.port, trusting(pki))
    try:
        assert client.ssl_object.selected_alpn_protocol() is None  # the client offered none
        got = await client.request("GET", "/hello?x=1")
        assert got.status == 200
        echoed = orjson.loads(got.body)
        assert (echoed["path"], echoed["query"]) == ("/hello", "x=1")
        body = bytes(range(256)) * 300
        got = await client.request("POST", "/upload", body=body)
        assert got.status == 200
        echoed = orjson.loads(got.body)
        assert echoed["body_size"] == len(body)
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
        chunked = (
            b"POST /chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        got = await client.request(raw=chunked)
        echoed = orjson.loads(got.body)
        assert (got.status, echoed["body_size"]) == (200, 11)
        assert echoed["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
        got = await client.request("GET", "/chunked")
        assert got.status == 200
        assert got.header("transfer-encoding") == "chunked"
        assert got.body == b"one,two,three"
        assert len(gw.gateway.ctx.connections) == 1  # all four on the one connection
    finally:
        await client.close()
    assert echo_upstream.requests == 4


async def test_aiohttp_client_over_https(echo_upstream, make_gateway, pki):
    """An ordinary HTTPS client (aiohttp, certificate verified against the test CA) gets its
    answers on one kept-alive connection; a client offering h2 and http/1.1 is given http/1.1."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki))
    ctx = trusting(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    conn = aiohttp.TCPConnector(ssl=ctx, limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for i in range(3):
            async with s.get(f"https://localhost:{gw.port}/n/{i}") as r:
                assert r.status == 200
                assert (await r.json())["path"] == f"/n/{i}"
        assert len(gw.gateway.ctx.connections) == 1  # type: ignore[union-attr]
    client = await TlsClient.open(gw.port, ctx)
    try:
        assert client.ssl_object.selected_alpn_protocol() == "http/1.1"
        assert (await client.request("GET", "/alpn")).status == 200
    finally:
        await client.close()


async def test_forwarded_proto_is_https_and_a_clients_copy_is_replaced(
    echo_upstream, make_gateway, pki
):
    """X-Forwarded-Proto: https on a TLS listener; a client's own value (any spelling) is not
    what the upstream sees, since the client is not a trusted proxy."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki))
    got = await one_request(
        gw.port,
        trusting(pki),
        headers=[("X-Forwarded-Proto", "http"), ("X_Forwarded_Proto", "gopher")],
    )
    assert got.status == 200
    protos = [
        v for k, v in got.upstream_headers() if k.lower().replace("_", "-") == "x-forwarded-proto"
    ]
    assert protos == ["https"]


async def test_forwarded_proto_from_a_trusted_proxy_is_kept(echo_upstream, make_gateway, pki):
    """A trusted proxy in front of the TLS listener keeps its X-Forwarded-Proto (as on plain HTTP)."""
    cfg = tls_config(echo_upstream.url, pki, trusted_proxies=["127.0.0.1/32"])
    gw = await make_gateway(cfg)
    got = await one_request(gw.port, trusting(pki), headers=[("X-Forwarded-Proto", "http")])
    assert got.upstream("x-forwarded-proto") == ["http"]
    got = await one_request(gw.port, trusting(pki))
    assert got.upstream("x-forwarded-proto") == ["https"]


# ---------------------------------------------------------------------------- client certificates


async def test_verified_client_certificate_reaches_upstream_as_xfcc(
    echo_upstream, make_gateway, pki
):
    """Envoy's format, exactly two fields: the hash of the DER certificate and its subject; the
    same on every request of the connection; the connection carries the DER itself."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki, mtls(pki)))
    client = await TlsClient.open(gw.port, trusting(pki, pki.client))
    try:
        first = await client.request("GET", "/a")
        second = await client.request("GET", "/b")
        (conn,) = gw.gateway.ctx.connections  # type: ignore[union-attr]
        assert conn.peer_certificate == pki.client.der
    finally:
        await client.close()
    want = expected_element(pki.client)
    assert first.upstream(XFCC) == [want]
    assert second.upstream(XFCC) == [want]
    assert want == (
        f"Hash={hashlib.sha256(pki.client.der).hexdigest()};"
        'Subject="CN=client.test,O=gateway tests"'
    )


@pytest.mark.parametrize(
    "name",
    [
        "X-Forwarded-Client-Cert",
        "x-forwarded-client-cert",
        "X_Forwarded_Client_Cert",
        "x-forwarded_client-cert",
        "X_FORWARDED-CLIENT_CERT",
    ],
)
@pytest.mark.parametrize("with_cert", [True, False], ids=["client-cert", "no-client-cert"])
async def test_client_sent_xfcc_is_removed(echo_upstream, make_gateway, pki, name, with_cert):
    """A client (not a trusted proxy) cannot pass a certificate off as verified: its
    X-Forwarded-Client-Cert, in any spelling, even named in Connection, never reaches the
    upstream; what does is the certificate the handshake verified, or nothing."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki, mtls(pki)))
    forged = 'Hash=00;Subject="CN=admin"'
    got = await one_request(
        gw.port,
        trusting(pki, pki.client if with_cert else None),
        headers=[(name, forged), ("Connection", f"keep-alive, {name}")],
    )
    assert got.status == 200
    seen = [v for k, v in got.upstream_headers() if k.lower().replace("_", "-") == XFCC]
    assert seen == ([expected_element(pki.client)] if with_cert else [])


async def test_xfcc_from_a_trusted_proxy_is_kept_and_appended_to(echo_upstream, make_gateway, pki):
    """From trusted_proxies: what the proxy sent (several fields joined by commas), then ours
    after a comma; its `_` spelling is still removed (a front proxy passes that one through
    from its own clients untouched)."""
    cfg = tls_config(echo_upstream.url, pki, mtls(pki), trusted_proxies=["127.0.0.1/32"])
    gw = await make_gateway(cfg)
    theirs = 'Hash=aa;Subject="CN=end user"'
    headers = [
        ("X-Forwarded-Client-Cert", theirs),
        ("X-Forwarded-Client-Cert", "Hash=bb"),
        ("X_Forwarded_Client_Cert", "Hash=forged"),
    ]
    got = await one_request(gw.port, trusting(pki, pki.client), headers=headers)
    assert got.upstream(XFCC) == [f"{theirs},Hash=bb,{expected_element(pki.client)}"]
    assert not [k for k, _ in got.upstream_headers() if "_" in k]
    # without a certificate of its own, the proxy's value goes on as it came
    got = await one_request(gw.port, trusting(pki), headers=headers[:1])
    assert got.upstream(XFCC) == [theirs]


async def test_xfcc_on_a_plain_listener(echo_upstream, make_gateway):
    """Without TLS: a client's copy is removed, a trusted proxy's kept as it came."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: Hash=00\r\nConnection: close\r\n\r\n"
    body = orjson.loads((await raw_exchange(gw.port, raw)).split(b"\r\n\r\n", 1)[1])
    assert [v for k, v in body["headers"] if k.lower() == XFCC] == []
    gw = await make_gateway(base_config(echo_upstream.url, trusted_proxies=["127.0.0.0/8"]))
    body = orjson.loads((await raw_exchange(gw.port, raw)).split(b"\r\n\r\n", 1)[1])
    assert [v for k, v in body["headers"] if k.lower() == XFCC] == ["Hash=00"]


async def test_optional_client_auth_without_a_certificate(echo_upstream, make_gateway, pki):
    """client_auth: optional lets a client without a certificate in, with no XFCC."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki, mtls(pki, "optional")))
    got = await one_request(gw.port, trusting(pki))
    assert got.status == 200
    assert got.upstream(XFCC) == []


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("who", ["no-certificate", "stranger"])
async def test_required_client_auth_refuses_the_handshake(
    echo_upstream, make_gateway, pki, version, who
):
    """client_auth: required: a client without a certificate, or with one from an unknown CA,
    never completes the handshake (with TLS 1.3 the client learns it at its first read), and
    nothing reaches the upstream. A client with a valid certificate gets through."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki, mtls(pki, "required")))
    top = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    cert = pki.stranger if who == "stranger" else None
    ctx = trusting(pki, cert, maximum_version=top)
    with pytest.raises(REFUSED):
        await one_request(gw.port, ctx)
    assert echo_upstream.requests == 0
    assert not gw.gateway.ctx.connections  # type: ignore[union-attr]
    got = await one_request(gw.port, trusting(pki, pki.client, maximum_version=top))
    assert got.status == 200
    assert got.upstream(XFCC) == [expected_element(pki.client)]


async def test_expired_client_certificate_is_refused(echo_upstream, make_gateway, pki):
    """A certificate from the right CA but past its validity is not a verified certificate."""
    old = pki.leaf(
        "old-client",
        [],
        client=True,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
        not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
    )
    gw = await make_gateway(tls_config(echo_upstream.url, pki, mtls(pki, "optional")))
    with pytest.raises(REFUSED):
        await one_request(gw.port, trusting(pki, old))
    assert echo_upstream.requests == 0


def _cert_with_subject(name: x509.Name) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_xfcc_subject_escaping():
    """`"` and `\\` in the subject are escaped with a backslash (on top of RFC 4514's own
    escapes); bytes outside visible ASCII (UTF-8, CR LF) become RFC 4514 `\\XX` escapes, so the
    value can never break the header block."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Quote " and \\ back, comma'),
            x509.NameAttribute(NameOID.COMMON_NAME, "Jos\u00e9\r\nX-Evil: 1"),
        ]
    )
    der = _cert_with_subject(name)
    element = client_cert_element(der).decode("ascii")
    digest = hashlib.sha256(der).hexdigest()
    assert element == (
        f"Hash={digest};"
        'Subject="CN=Jos\\\\C3\\\\A9\\\\0D\\\\0AX-Evil: 1,'
        'O=Quote \\\\\\" and \\\\\\\\ back\\\\, comma"'
    )
    plain = _cert_with_subject(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc")]))
    assert client_cert_element(plain) == (
        f'Hash={hashlib.sha256(plain).hexdigest()};Subject="CN=svc"'.encode()
    )


# ---------------------------------------------------------------------------- the other listeners

ROUTES = [
    {"name": "health", "path": "/healthz", "upstream": "api", "auth": "public"},
    {"name": "api", "path_prefix": "/v1", "upstream": "api", "scopes": ["payments"]},
]


async def test_forward_auth_listener_over_tls(echo_upstream, make_gateway, pki):
    """The decision listener over TLS (with client certificates required, as a front proxy
    would present one): 200 with the X-Auth-* headers, 401 without a token; nothing forwarded."""
    fa = {"host": "127.0.0.1", "port": 0, "tls": tls(pki, **mtls(pki, "required"))}
    gw = await make_gateway(base_config(echo_upstream.url, routes=ROUTES, forward_auth=fa))
    token = await gw.gateway.runtime.validator.issue(  # type: ignore[union-attr]
        "authorization_code", "app", "alice", "payments"
    )
    port = gw.gateway.ports["forward_auth"]
    assert gw.gateway.fa_ctx is not None and gw.gateway.fa_ctx.scheme == "https"
    asked = [("X-Original-URI", "/v1/items"), ("X-Original-Method", "GET")]
    got = await one_request(
        port,
        trusting(pki, pki.client),
        path="/auth",
        headers=[*asked, ("Authorization", f"Bearer {token}")],
    )
    assert got.status == 200
    assert got.header("x-auth-subject") == "alice"
    assert got.header("x-auth-client-id") == "app"
    assert got.header("x-auth-scope") == "payments"
    assert got.header("x-auth-grant") == "authorization_code"
    got = await one_request(port, trusting(pki, pki.client), path="/auth", headers=asked)
    assert got.status == 401
    with pytest.raises(REFUSED):
        await one_request(port, trusting(pki), path="/auth", headers=asked)
    assert echo_upstream.requests == 0


async def test_admin_listener_over_tls(echo_upstream, make_gateway, pki):
    """/healthz, /readyz and /metrics over HTTPS; the main listener stays plain HTTP here."""
    admin = {"host": "127.0.0.1", "port": 0, "tls": tls(pki)}
    gw = await make_gateway(base_config(echo_upstream.url, admin=admin))
    base = f"https://localhost:{gw.gateway.ports['admin']}"
    conn = aiohttp.TCPConnector(ssl=trusting(pki))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(base + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with s.get(base + "/metrics") as r:
            assert r.status == 200
            assert "gateway_tls_reloads_total" in await r.text()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://127.0.0.1:{gw.gateway.ports['admin']}/healthz") as r:
                await r.read()
        async with s.get(gw.url + "/x") as r:  # plain HTTP on the main listener
            assert (await r.json())["path"] == "/x"


async def test_start_refuses_files_that_do_not_load(echo_upstream, pki, tmp_path):
    """A key that does not match the certificate, or a missing file, is a config error at
    start, naming the listener, before anything is bound."""
    mismatched = {"cert_file": pki.server.cert_file, "key_file": pki.client.key_file}
    gw = Gateway(
        parse_config(
            base_config(
                echo_upstream.url, admin={"host": "127.0.0.1", "port": 0, "tls": mismatched}
            )
        )
    )
    with pytest.raises(Exception, match="admin: cannot load TLS files") as err:
        await gw.start()
    assert type(err.value).__name__ == "ConfigError"
    assert gw.servers == []
    missing = tls(pki, cert_file=str(tmp_path / "nope.crt"))
    gw = Gateway(
        parse_config(
            base_config(echo_upstream.url, listen={"host": "127.0.0.1", "port": 0, "tls": missing})
        )
    )
    with pytest.raises(Exception, match="listen: cannot load TLS files"):
        await gw.start()


# ---------------------------------------------------------------------------- the attacker's view


async def test_plain_http_to_the_tls_port(echo_upstream, make_gateway, pki):
    """A plain-HTTP request sent to the TLS port gets no HTTP answer and is closed; nothing
    reaches the upstream; the listener goes on serving TLS clients."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki))
    raw = b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n"
    out = await raw_exchange(gw.port, raw, read_timeout=5)
    assert b"HTTP/1.1" not in out
    assert echo_upstream.requests == 0
    assert not gw.gateway.ctx.connections  # type: ignore[union-attr]
    got = await one_request(gw.port, trusting(pki), path="/after")
    assert got.status == 200
    assert echo_upstream.requests == 1


async def test_tls_client_hello_to_a_plain_port(echo_upstream, make_gateway):
    """A TLS ClientHello sent to the plain-HTTP port is answered 400 and closed; nothing
    reaches the upstream; the listener goes on serving."""
    gw = await make_gateway(base_config(echo_upstream.url))
    out = await raw_exchange(gw.port, client_hello(), read_timeout=5)
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    assert b"\r\nconnection: close\r\n" in out
    assert echo_upstream.requests == 0
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/after") as r:
        assert r.status == 200


async def test_a_tls_client_of_a_plain_port_fails_cleanly(echo_upstream, make_gateway, pki):
    """An HTTPS client pointed at the plain port fails its handshake; nothing goes upstream."""
    gw = await make_gateway(base_config(echo_upstream.url))
    with pytest.raises(REFUSED):
        await one_request(gw.port, trusting(pki))
    assert echo_upstream.requests == 0


async def test_tls12_renegotiation_is_refused(echo_upstream, make_gateway, pki):
    """A client asking to renegotiate TLS 1.2 (`openssl s_client`, `R`) is refused with
    no_renegotiation; the listener goes on serving. Python's ssl cannot renegotiate, so the
    openssl binary drives it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl binary is not installed")
    gw = await make_gateway(tls_config(echo_upstream.url, pki))
    argv = [
        openssl, "s_client", "-connect", f"127.0.0.1:{gw.port}", "-tls1_2",
        "-CAfile", pki.ca_file, "-servername", "localhost",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"R\n")  # s_client: renegotiate now
    await proc.stdin.drain()
    try:
        with contextlib.suppress(TimeoutError):  # refused: s_client stops by itself
            await asyncio.wait_for(proc.wait(), 10)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text  # the first handshake was fine
    assert "RENEGOTIATING" in text
    assert "no renegotiation" in text, text[-2000:]
    assert echo_upstream.requests == 0
    got = await one_request(gw.port, trusting(pki), path="/after")
    assert got.status == 200


async def _gateway_with_handshake_timeout(cfg: dict[str, Any], seconds: float) -> Gateway:
    gw = Gateway(parse_config(cfg))
    gw.handshake_timeout = seconds
    await gw.start()
    return gw


async def _closed_after(port: int, send: bytes, limit: float) -> float:
    """Connect, send `send` (maybe nothing) and nothing more: seconds until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        if send:
            writer.write(send)
            await writer.drain()
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), limit)
            if not chunk:
                return time.monotonic() - started
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.parametrize("listener", ["listen", "forward_auth", "admin"])
@pytest.mark.parametrize("send", ["nothing", "half-a-client-hello"])
async def test_a_handshake_that_never_finishes_is_cut(echo_upstream, pki, send, listener):
    """A TCP client that connects and says nothing, or sends half a ClientHello and waits,
    is closed once the handshake timeout has passed, on every TLS listener: it does not hold
    a socket forever. A real client is still served meanwhile."""
    here = {"host": "127.0.0.1", "port": 0, "tls": tls(pki)}
    cfg = tls_config(echo_upstream.url, pki, forward_auth=here, admin=here)
    gw = await _gateway_with_handshake_timeout(cfg, 0.5)
    try:
        hello = client_hello()
        data = hello[: len(hello) // 2] if send != "nothing" else b""
        port = gw.ports[listener]
        waited = await asyncio.gather(*(_closed_after(port, data, 10) for _ in range(5)))
        assert all(0.3 < w < 5 for w in waited), waited
        path = "/healthz" if listener == "admin" else "/"
        got = await one_request(port, trusting(pki), path=path)
        assert got.status in (200, 401)  # forward-auth: a decision without a token
    finally:
        await gw.close()


async def test_handshake_timeout_is_ten_seconds_by_default(echo_upstream, make_gateway, pki):
    """The default handshake timeout: long enough for any real handshake, short enough that
    a silent connection goes soon."""
    gw = await make_gateway(tls_config(echo_upstream.url, pki))
    assert gw.gateway.handshake_timeout == 10.0
    assert gw.gateway.ctx is not None and gw.gateway.ctx.header_timeout >= 10.0


# ---------------------------------------------------------------------------- reload in process


async def test_refresh_swaps_the_certificate_and_the_client_ca(echo_upstream, make_gateway, pki):
    """Gateway.refresh_tls() (what SIGHUP and the file watcher call), under both loops: new
    handshakes get the new certificate and are verified against the new client CA file; an
    open connection keeps its own; nothing changes while the files do not."""
    folder = pki.folder / "live"
    folder.mkdir()
    crt, key, cas = folder / "tls.crt", folder / "tls.key", folder / "clients.pem"
    shutil.copy(pki.server.cert_file, crt)
    shutil.copy(pki.server.key_file, key)
    shutil.copy(pki.ca_file, cas)
    block = {"cert_file": str(crt), "key_file": str(key), "client_ca_file": str(cas)}
    listen = {"host": "127.0.0.1", "port": 0, "tls": block}
    gw = await make_gateway(base_config(echo_upstream.url, listen=listen))
    kept = await TlsClient.open(gw.port, trusting(pki, pki.client))
    try:
        assert (await kept.request("GET", "/1")).upstream(XFCC) == [expected_element(pki.client)]
        gw.gateway.refresh_tls()  # unchanged files: nothing happens
        assert gw.gateway.metrics.tls_reloads.labels("listen", "applied")._value.get() == 0
        with pytest.raises(REFUSED):
            await one_request(gw.port, trusting(pki, pki.stranger))
        new = pki.leaf("renewed", ["localhost", "127.0.0.1"])
        shutil.copy(new.cert_file, crt)
        shutil.copy(new.key_file, key)
        shutil.copy(pki.other_ca_file, cas)  # now only the unrelated CA's clients are let in
        gw.gateway.refresh_tls()
        assert gw.gateway.metrics.tls_reloads.labels("listen", "applied")._value.get() == 1
        client = await TlsClient.open(gw.port, trusting(pki, pki.stranger))
        try:
            assert client.server_certificate() == new.der
            got = await client.request("GET", "/stranger")
            assert got.upstream(XFCC) == [expected_element(pki.stranger)]
        finally:
            await client.close()
        with pytest.raises(REFUSED):
            await one_request(gw.port, trusting(pki, pki.client))
        again = await kept.request("GET", "/2")  # verified before the swap: goes on
        assert again.upstream(XFCC) == [expected_element(pki.client)]
        assert kept.server_certificate() == pki.server.der
    finally:
        await kept.close()


def test_xfcc_of_a_certificate_cryptography_cannot_parse():
    """The hash is still given (it is what certificate-bound tokens compare); the subject is
    empty rather than the request failing."""
    der = b"\x30\x03\x02\x01\x00"  # DER, but not a certificate
    assert client_cert_element(der) == (
        f'Hash={hashlib.sha256(der).hexdigest()};Subject=""'.encode()
    )
