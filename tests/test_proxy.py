"""The main listener as a reverse proxy: framing, streaming, keep-alive, limits, failures."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.fixtures.servers import base_config, free_port, raw_exchange


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _responses(raw: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.")]


async def test_get_is_forwarded_with_forwarding_headers(echo_upstream, make_gateway):
    """A public GET reaches the upstream with X-Forwarded-* and the same X-Request-Id."""
    gw = await make_gateway(base_config(echo_upstream.url))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/hello?x=1") as r:
        assert r.status == 200
        body = await r.json()
        rid = r.headers["X-Request-Id"]
    headers = {k.lower(): v for k, v in body["headers"]}
    assert body["path"] == "/hello"
    assert body["query"] == "x=1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert headers["x-request-id"] == rid


async def test_forwarded_proto_is_the_listeners_scheme(echo_upstream, make_gateway):
    """X-Forwarded-Proto comes from the listener the client used, not a constant in the
    forwarding code; a client's own copy is replaced (it is not a trusted proxy)."""
    gw = await make_gateway(base_config(echo_upstream.url))
    ctx = gw.gateway.ctx
    assert ctx is not None
    ctx.scheme = "https"  # what a TLS listener sets; connections made from now on carry it
    raw = b"GET /p HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: gopher\r\nConnection: close\r\n\r\n"
    out = await raw_exchange(gw.port, raw)
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    protos = [v for k, v in body["headers"] if k.lower() == "x-forwarded-proto"]
    assert protos == ["https"]


async def test_trusted_proxy_headers_only_under_their_own_names(echo_upstream, make_gateway):
    """A trusted proxy sets X-Forwarded-For/-Proto/-Host under their `-` names and passes a
    client's `X_Forwarded_*` on untouched: those never reach the upstream (an upstream reading
    `_` as `-` would take the client's forged value), while the proxy's own are kept."""
    gw = await make_gateway(base_config(echo_upstream.url, trusted_proxies=["127.0.0.1/32"]))
    raw = (
        b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"X-Forwarded-Proto: https\r\nX_Forwarded_Proto: gopher\r\n"
        b"X-Forwarded-Host: api.example\r\nX_Forwarded_Host: evil.example\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw)
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    got = [(k.lower(), v) for k, v in body["headers"]]
    assert not [k for k, _ in got if k.startswith("x_forwarded")]
    assert ("x-forwarded-for", "203.0.113.7, 127.0.0.1") in got
    assert ("x-forwarded-proto", "https") in got
    assert ("x-forwarded-host", "api.example") in got


async def test_http10_without_host_gets_the_upstreams_authority(echo_upstream, make_gateway):
    """HTTP/1.0 may omit Host; the upstream request (HTTP/1.1) needs one: the upstream URL's
    host:port is sent, and no empty X-Forwarded-Host."""
    gw = await make_gateway(base_config(echo_upstream.url))
    out = await raw_exchange(gw.port, b"GET /p HTTP/1.0\r\n\r\n")
    assert _status(out) == 200
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    got = {k.lower(): v for k, v in body["headers"]}
    assert got["host"] == echo_upstream.url.removeprefix("http://")
    assert "x-forwarded-host" not in got


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123.x:y_z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("bad id", False),
        ("x\u00e9", False),
    ],
    ids=["valid", "max-length", "too-long", "space", "non-ascii"],
)
async def test_request_id_kept_only_when_well_formed(echo_upstream, make_gateway, sent, kept):
    """X-Request-Id is kept when it is 1-128 safe characters, replaced otherwise."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: "
        + sent.encode("utf-8")
        + b"\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw)
    head = out.split(b"\r\n\r\n")[0].decode("latin-1").lower()
    rid = next(
        line.split(": ", 1)[1] for line in head.split("\r\n") if line.startswith("x-request-id")
    )
    assert (rid == sent.lower()) is kept
    assert 1 <= len(rid) <= 128


async def test_hop_by_hop_identity_and_credentials_are_stripped(echo_upstream, make_gateway):
    """Hop-by-hop, Connection-named, spoofed identity and credential headers never go upstream."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = (
        b"GET /p?a=1&access_token=SECRET&appsecret_proof=ab&appsecret_time=1&b=2 HTTP/1.1\r\n"
        b"Host: x\r\nConnection: close, X-Custom\r\nX-Custom: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic Zm9v\r\n"
        b"Authorization: Bearer SECRET\r\nX-Appsecret-Proof: ab\r\nX-Appsecret-Time: 1\r\n"
        b"X-Auth-Subject: admin\r\nx-auth-client-id: evil\r\nX_Auth_Scope: all\r\n"
        b"X-AUTH-GRANT: authorization_code\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-Host: evil\r\nX-Keep: yes\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw)
    assert _status(out) == 200
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    names = {k.lower() for k, _ in body["headers"]}
    headers = {k.lower(): v for k, v in body["headers"]}
    for gone in (
        "x-custom",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "authorization",
        "x-appsecret-proof",
        "x-appsecret-time",
        "x-auth-subject",
        "x-auth-client-id",
        "x_auth_scope",
        "x-auth-scope",
        "x-auth-grant",
    ):
        assert gone not in names, gone
    assert headers["x-keep"] == "yes"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == "x"
    assert body["query"] == "a=1&b=2"
    assert b"SECRET" not in out


async def test_trusted_proxy_forwarded_headers_are_appended(echo_upstream, make_gateway):
    """From a trusted peer, X-Forwarded-For is appended to and X-Forwarded-Proto kept."""
    gw = await make_gateway(base_config(echo_upstream.url, trusted_proxies=["127.0.0.0/8"]))
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/", headers=headers) as r:
        body = await r.json()
    got = {k.lower(): v for k, v in body["headers"]}
    assert got["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert got["x-forwarded-proto"] == "https"


async def test_upstream_connections_are_reused(echo_upstream, make_gateway):
    """Sequential requests share one pooled upstream connection."""
    gw = await make_gateway(base_config(echo_upstream.url))
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(gw.url + "/r") as r:
                assert r.status == 200
                await r.read()
    assert echo_upstream.requests == 20
    assert echo_upstream.connections == 1


async def test_chunked_request_and_response_bodies(echo_upstream, make_gateway):
    """A chunked upload arrives whole upstream; a chunked answer arrives whole at the client."""
    gw = await make_gateway(base_config(echo_upstream.url))
    payload = b"".join(bytes([i % 251]) * 1000 for i in range(300))

    async def gen() -> Any:
        for i in range(0, len(payload), 7000):
            yield payload[i : i + 7000]

    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/up", data=gen()) as r:
            body = await r.json()
        assert body["body_size"] == len(payload)
        assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert any(k.lower() == "transfer-encoding" for k, _ in body["headers"])
        async with s.get(gw.url + "/chunked") as r:
            assert await r.read() == b"one,two,three"
            assert r.headers.get("Transfer-Encoding") == "chunked"


async def test_expect_continue_is_answered_then_body_flows(echo_upstream, make_gateway):
    """`Expect: 100-continue` gets `100 Continue` from the gateway before the body is sent."""
    gw = await make_gateway(base_config(echo_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    assert echo_upstream.last["body_size"] == 5
    assert not any(k.lower() == "expect" for k, _ in echo_upstream.last["headers"])


async def test_head_and_204_then_next_request_on_same_connection(echo_upstream, make_gateway):
    """HEAD and 204 answers carry no body and the connection serves the next request."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = (
        b"HEAD /big/1000 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw)
    statuses = [int(line.split(b" ")[1]) for line in _responses(out)]
    assert statuses == [200, 204, 304, 200]
    first = out.split(b"HTTP/1.1 204")[0]
    assert b"content-length: 1000" in first.lower()
    assert first.endswith(b"\r\n\r\n")  # no body bytes after the HEAD answer's head
    assert out.endswith(b"}")
    assert echo_upstream.connections == 1


async def test_pipelined_requests_answered_in_order(echo_upstream, make_gateway):
    """Three pipelined requests in one write get three answers in request order."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = (
        b"".join(b"GET /slow/%s HTTP/1.1\r\nHost: x\r\n\r\n" % d for d in (b"0.2", b"0", b"0.1"))
        + b"GET /end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw, read_timeout=5)
    bodies = [
        orjson.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])
        for part in out.split(b"HTTP/1.1 200 OK")[1:]
    ]
    assert [b["path"] for b in bodies] == ["/slow/0.2", "/slow/0", "/slow/0.1", "/end"]


async def test_requests_dropped_behind_a_closing_answer_are_not_counted(
    echo_upstream, make_gateway
):
    """Pipelined requests behind a `Connection: close` answer are never started: they must
    not be counted out of the in-flight figure (it went negative, and a drain then waited for
    it to reach 0 until shutdown_timeout)."""
    gw = await make_gateway(base_config(echo_upstream.url))
    raw = (
        b"GET /slow/0.2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw)
    assert _responses(out) == [b"HTTP/1.1 200 OK"]
    for _ in range(50):
        if not gw.gateway.ctx.connections:
            break
        await asyncio.sleep(0.05)
    assert gw.gateway.ctx.in_flight == 0
    assert echo_upstream.requests == 1


async def test_keep_alive_and_connection_close(echo_upstream, make_gateway):
    """HTTP/1.1 keeps the connection; `Connection: close` and HTTP/1.0 close it after the answer."""
    gw = await make_gateway(base_config(echo_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    for _ in range(2):
        writer.write(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.write(b"GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 2)
    assert b"connection: close" in rest.lower()
    writer.close()
    out = await raw_exchange(gw.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200")
    assert orjson.loads(out.split(b"\r\n\r\n", 1)[1])["path"] == "/old"


@pytest.mark.parametrize(
    ("version", "extra", "answer_version", "stays_open"),
    [
        (b"1.1", b"", b"HTTP/1.1", True),
        (b"1.1", b"Connection: close\r\n", b"HTTP/1.1", False),
        (b"1.1", b"Proxy-Connection: close\r\n", b"HTTP/1.1", True),  # hop-by-hop, not ours
        (b"1.1", b"Connection: keep-alive\r\n", b"HTTP/1.1", True),
        (b"1.0", b"", b"HTTP/1.0", False),
        (b"1.0", b"Proxy-Connection: keep-alive\r\n", b"HTTP/1.0", False),
        (b"1.0", b"Connection: keep-alive\r\n", b"HTTP/1.0", True),
        (b"1.0", b"Connection: Keep-Alive, X-Foo\r\n", b"HTTP/1.0", True),
    ],
)
async def test_request_version_and_keep_alive_by_connection_headers(
    echo_upstream, make_gateway, version, extra, answer_version, stays_open
):
    """The request's HTTP version (read cheaply when no Connection-type header is present)
    decides the answer's version and, with Connection, whether the connection stays open."""
    gw = await make_gateway(base_config(echo_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /v HTTP/" + version + b"\r\nHost: x\r\n" + extra + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(answer_version + b" 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        if stays_open:  # nothing more comes, and the connection is not closed
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)
        else:
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed after the answer
    finally:
        writer.close()


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\x0b\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\nabc",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \t \r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: \r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n Folded: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad\x00Name: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=[
        "cl-and-te",
        "duplicate-cl",
        "conflicting-cl",
        "te-list",
        "te-xchunked",
        "te-twice",
        "te-space-before-colon",
        "te-vertical-tab",
        "cl-plus-sign",
        "cl-two-numbers",
        "te-in-http10",
        "two-hosts",
        "no-host",
        "empty-host",
        "whitespace-host",
        "empty-host-http10",
        "empty-host-absolute-form",
        "obs-fold",
        "nul-in-name",
        "bare-lf",
        "connect",
        "asterisk",
    ],
)
async def test_smuggling_and_malformed_requests_get_400(echo_upstream, make_gateway, head):
    """Ambiguous framing and malformed heads are refused with 400 and never reach the upstream."""
    gw = await make_gateway(base_config(echo_upstream.url))
    out = await raw_exchange(gw.port, head)
    assert _status(out) == 400
    assert b"connection: close" in out.lower()
    assert echo_upstream.requests == 0


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1234567890\r\n" * 1200 + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"z" * 2000, 413),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"z" * 1024
            + b"\r\n"
            + b"400\r\n"
            + b"z" * 1024
            + b"\r\n0\r\n\r\n",
            413,
        ),
    ],
    ids=["url", "one-header", "many-headers", "content-length", "chunked"],
)
async def test_limits(echo_upstream, make_gateway, raw, status):
    """Over-limit URL, headers and bodies are refused, unechoed, and never reach the upstream."""
    cfg = base_config(echo_upstream.url, limits={"max_body": 1500})
    gw = await make_gateway(cfg)
    out = await raw_exchange(gw.port, raw)
    assert _status(out) == status
    assert b"aaaaaaaa" not in out and b"bbbbbbbb" not in out and b"zzzzzzzz" not in out
    assert echo_upstream.requests == 0


async def test_route_max_body_overrides_default(echo_upstream, make_gateway):
    """A route's max_body applies instead of limits.max_body."""
    routes = [
        {"name": "small", "path": "/small", "upstream": "api", "auth": "public", "max_body": "10"},
        {"name": "rest", "path_prefix": "/", "upstream": "api", "auth": "public"},
    ]
    gw = await make_gateway(base_config(echo_upstream.url, routes=routes))
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/small", data=b"x" * 11) as r:
            assert r.status == 413
        async with s.post(gw.url + "/other", data=b"x" * 11) as r:
            assert r.status == 200
    assert echo_upstream.requests == 1


async def test_failover_across_targets(echo_upstream, make_gateway):
    """Round-robin skips a refused target; every request still succeeds."""
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = base_config(echo_upstream.url)
    cfg["upstreams"] = {"api": {"targets": [dead, echo_upstream.url]}}
    gw = await make_gateway(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            async with s.get(gw.url + "/f", headers={"Connection": "close"}) as r:
                assert r.status == 200
    assert echo_upstream.requests == 6


async def test_round_robin_spreads_requests(aiohttp_server, make_gateway):
    """With two live targets, both receive requests."""
    hits = {"a": 0, "b": 0}

    def app(name: str) -> web.Application:
        async def handle(_: web.Request) -> web.Response:
            hits[name] += 1
            return web.Response(text=name)

        a = web.Application()
        a.router.add_get("/{t:.*}", handle)
        return a

    sa, sb = await aiohttp_server(app("a")), await aiohttp_server(app("b"))
    cfg = base_config("http://unused")
    cfg["upstreams"] = {
        "api": {"targets": [f"http://127.0.0.1:{sa.port}", f"http://127.0.0.1:{sb.port}"]}
    }
    gw = await make_gateway(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            async with s.get(gw.url + "/") as r:
                await r.read()
    assert hits["a"] >= 3 and hits["b"] >= 3


async def test_upstream_down_is_502(make_gateway):
    """A refused upstream connection is answered 502 bad_gateway as JSON."""
    gw = await make_gateway(base_config(f"http://127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/") as r:
        assert r.status == 502
        assert (await r.json())["error"] == "bad_gateway"
        assert "X-Request-Id" in r.headers


async def test_upstream_reset_is_502(raw_upstream, make_gateway):
    """An upstream that closes without answering is 502."""
    up = await raw_upstream(None)
    gw = await make_gateway(base_config(f"http://127.0.0.1:{up.port}"))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/") as r:
        assert r.status == 502


async def test_upstream_timeout_is_504(echo_upstream, make_gateway):
    """An upstream slower than its timeout is answered 504 gateway_timeout."""
    cfg = base_config(echo_upstream.url)
    cfg["upstreams"]["api"]["timeout"] = "300ms"
    gw = await make_gateway(cfg)
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/slow/2") as r:
        assert r.status == 504
        assert (await r.json())["error"] == "gateway_timeout"


async def test_close_delimited_answer_is_relayed_whole(raw_upstream, make_gateway):
    """An answer delimited by the upstream closing reaches the client complete."""
    up = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"q" * 100_000)
    gw = await make_gateway(base_config(f"http://127.0.0.1:{up.port}"))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/") as r:
        assert r.status == 200
        assert await r.read() == b"q" * 100_000


async def test_client_gone_cancels_upstream_exchange(aiohttp_server, make_gateway):
    """When the client disconnects, the upstream request is abandoned too."""
    seen = {"started": 0, "cancelled": 0}

    async def slow(_: web.Request) -> web.Response:
        seen["started"] += 1
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen["cancelled"] += 1
            raise
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = await aiohttp_server(app)  # the test server cancels handlers of lost clients
    gw = await make_gateway(base_config(f"http://127.0.0.1:{server.port}"))
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    for _ in range(50):
        if seen["started"]:
            break
        await asyncio.sleep(0.02)
    writer.close()
    for _ in range(100):
        if seen["cancelled"]:
            break
        await asyncio.sleep(0.02)
    assert seen == {"started": 1, "cancelled": 1}


async def test_no_route_is_404_json(echo_upstream, make_gateway):
    """A path no route matches is answered 404 JSON and not forwarded."""
    routes = [{"name": "only", "path": "/only", "upstream": "api", "auth": "public"}]
    gw = await make_gateway(base_config(echo_upstream.url, routes=routes))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/other") as r:
        assert r.status == 404
        assert (await r.json())["error"] == "not_found"
    assert echo_upstream.requests == 0


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/../b", "/b"),
        ("/a//b", "/a/b"),
        ("/%7Euser/./x", "/~user/x"),
        ("/v1/%2e%2e/b", "/b"),
    ],
    ids=["dotdot", "double-slash", "unreserved-escape", "encoded-dotdot"],
)
async def test_upstream_gets_normalised_path(echo_upstream, make_gateway, path, expected):
    """The path sent upstream is the normalised one."""
    gw = await make_gateway(base_config(echo_upstream.url))
    out = await raw_exchange(
        gw.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert _status(out) == 200
    assert orjson.loads(out.split(b"\r\n\r\n", 1)[1])["path"] == expected


@pytest.mark.parametrize(
    "path",
    ["/a%2fb", "/a%5Cb", "/a\\b", "/..", "/a/../../b", "/%00", "/a%0d%0ab"],
    ids=["enc-slash", "enc-backslash", "backslash", "escape-root", "escape-deep", "nul", "crlf"],
)
async def test_unsafe_paths_are_400(echo_upstream, make_gateway, path):
    """Paths that cannot be normalised safely are refused with 400 invalid_request."""
    gw = await make_gateway(base_config(echo_upstream.url))
    out = await raw_exchange(gw.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert _status(out) == 400
    assert b'"invalid_request"' in out
    assert echo_upstream.requests == 0


async def test_strip_prefix_rewrites_upstream_path(echo_upstream, make_gateway):
    """strip_prefix removes the prefix from the path sent upstream."""
    routes = [
        {
            "name": "v1",
            "path_prefix": "/v1/items",
            "upstream": "api",
            "auth": "public",
            "strip_prefix": "/v1",
        }
    ]
    gw = await make_gateway(base_config(echo_upstream.url, routes=routes))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/v1/items/7") as r:
        assert (await r.json())["path"] == "/items/7"


class WsUpstream:
    """A WebSocket echo server on /ws (any method): counts the requests it got."""

    def __init__(self) -> None:
        self.url = ""
        self.requests = 0


@pytest.fixture
async def ws_upstream(aiohttp_server: Any) -> WsUpstream:
    state = WsUpstream()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        state.requests += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_route("*", "/ws", ws_handler)
    server = await aiohttp_server(app)
    state.url = f"http://127.0.0.1:{server.port}"
    return state


_WS_HANDSHAKE = (
    b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
#: a masked text frame "hi" (a client's frames are masked, RFC 6455 5.3)
_WS_FRAME = bytes([0x81, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2])


async def test_websocket_upgrade_is_piped(ws_upstream, make_gateway):
    """A WebSocket upgrade is relayed and frames flow both ways."""
    gw = await make_gateway(base_config(ws_upstream.url))
    async with aiohttp.ClientSession() as s, s.ws_connect(gw.url + "/ws") as ws:
        for word in ("a", "b" * 70000):
            await ws.send_str(word)
            msg = await ws.receive(timeout=3)
            assert msg.data == "echo:" + word


@pytest.mark.parametrize("length", [b"", b"Content-Length: 0\r\n"], ids=["no-body", "cl-0"])
async def test_websocket_upgrade_on_raw_socket(ws_upstream, make_gateway, length):
    """A raw GET handshake (`Content-Length: 0` is no body) gets the upstream's 101, and a
    frame sent right after it travels through the tunnel."""
    gw = await make_gateway(base_config(ws_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /ws HTTP/1.1\r\n" + _WS_HANDSHAKE + length + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head.lower()
    writer.write(_WS_FRAME)
    frame = await asyncio.wait_for(reader.readexactly(9), 3)
    assert frame == b"\x81\x07echo:hi"  # an unmasked text frame from the server
    writer.close()
    assert ws_upstream.requests == 1


@pytest.mark.parametrize(
    "body",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize("method", [b"POST", b"GET"])
async def test_websocket_upgrade_with_body_is_refused_at_once(
    ws_upstream, make_gateway, method, body
):
    """An Upgrade request with a body: llhttp hands the body over as bytes of the new protocol,
    so the upstream would wait for a body never sent (the client got a 504). Refused with 400
    at once, before any upstream is asked; a frame sent behind it is never relayed."""
    gw = await make_gateway(base_config(ws_upstream.url))
    started = asyncio.get_running_loop().time()
    out = await raw_exchange(
        gw.port, method + b" /ws HTTP/1.1\r\n" + _WS_HANDSHAKE + body + _WS_FRAME
    )
    assert asyncio.get_running_loop().time() - started < 1.5
    assert _status(out) == 400
    assert b"connection: close" in out.lower()
    assert ws_upstream.requests == 0


async def test_admin_endpoints(echo_upstream, make_gateway):
    """The admin listener answers /healthz, /readyz and Prometheus /metrics by route and status."""
    gw = await make_gateway(base_config(echo_upstream.url))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/x") as r:
            await r.read()
        async with s.get(gw.admin_url + "/healthz") as r:
            assert r.status == 200
        async with s.get(gw.admin_url + "/readyz") as r:
            assert r.status == 200
        async with s.get(gw.admin_url + "/metrics") as r:
            text = await r.text()
        async with s.get(gw.url + "/metrics") as r:
            assert (await r.json())["path"] == "/metrics"  # never on the main listener
    assert 'gateway_requests_total{method="GET",route="public",status="200"} 1.0' in text
    assert "gateway_request_duration_seconds_bucket" in text
    assert "gateway_in_flight" in text


async def test_access_log_line_without_credentials(echo_upstream, make_gateway, capfd):
    """One JSON access line per request, with the query's credentials removed."""
    gw = await make_gateway(base_config(echo_upstream.url))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/log?access_token=TOPSECRET&keep=1&appsecret_proof=PROOF") as r:
            rid = r.headers["X-Request-Id"]
    gw.gateway.runtime.access.flush()
    out = capfd.readouterr().out
    assert "TOPSECRET" not in out and "PROOF" not in out
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    line = next(entry for entry in lines if entry.get("request_id") == rid)
    assert line["path"] == "/log?keep=1"
    assert line["status"] == 200
    assert line["route"] == "public"
    assert line["upstream"] == "api"
    assert line["duration_ms"] >= 0
    assert line["bytes"] > 0


async def test_upstream_hop_by_hop_answer_headers_are_removed(raw_upstream, make_gateway):
    """Headers the upstream names in Connection, its hop-by-hop ones and its request id stay behind."""
    up = await raw_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal, keep-alive\r\nX-Internal: secret\r\n"
        b"Keep-Alive: timeout=5\r\nX-Request-Id: upstream-id\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok"
    )
    gw = await make_gateway(base_config(f"http://127.0.0.1:{up.port}"))
    out = await raw_exchange(
        gw.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine\r\nConnection: close\r\n\r\n"
    )
    head = out.split(b"\r\n\r\n")[0].lower()
    assert out.startswith(b"HTTP/1.1 200")
    assert b"x-internal" not in head
    assert b"keep-alive:" not in head
    assert b"x-kept: 1" in head
    assert head.count(b"x-request-id") == 1
    assert b"x-request-id: mine" in head
    assert out.endswith(b"\r\n\r\nok")


async def test_large_head_split_across_reads_is_accepted(echo_upstream, make_gateway):
    """A head under max_header_bytes arriving in several reads is not counted twice (no 431)."""
    gw = await make_gateway(base_config(echo_upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 140) for i in range(90)
    )  # 92 fields: under max_header_count too
    assert 11_000 < len(head) < 16 * 1024
    writer.write(head[:200])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(head[200:] + b"Connection: close\r\n\r\n")
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    assert out.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-client", "trusted-proxy"])
async def test_custom_cert_header_only_from_trusted_proxies(echo_upstream, make_gateway, trusted):
    """A custom `tokens.mtls.cert_header` carries a certificate only a front proxy may vouch
    for: from anyone else it never reaches the upstream (an upstream reading it would take a
    client's forgery), in any `-`/`_` spelling; from a trusted proxy it is passed on."""
    cfg = base_config(echo_upstream.url, tokens={"mtls": {"cert_header": "X-SSL-Client-Cert"}})
    if trusted:
        cfg["trusted_proxies"] = ["127.0.0.1/32"]
    gw = await make_gateway(cfg)
    raw = (
        b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-SSL-Client-Cert: forged\r\nX_SSL_Client_Cert: forged-too\r\n\r\n"
    )
    out = await raw_exchange(gw.port, raw)
    body = orjson.loads(out.split(b"\r\n\r\n", 1)[1])
    got = [(k.lower(), v) for k, v in body["headers"] if "ssl" in k.lower()]
    assert got == ([("x-ssl-client-cert", "forged")] if trusted else [])
