"""Bounded-time fuzzing of the request parser path of a live gateway over raw sockets.

Hypothesis mutates a valid HTTP/1.1 request (methods, targets, versions, header names and
values with CR/LF/NUL/obs-fold, duplicated Content-Length/Transfer-Encoding, chunk framing,
truncation, pipelining) and sends each to one gateway running in a background thread with its
own event loop. Properties: every answer is a well-formed HTTP/1.1 response with a known status
(never 5xx besides 502/503/504), no handler task ever fails, the gateway still answers a plain
request afterwards, and the upstream only ever sees normalised paths of public routes without
any credential or identity header.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.http.exchange import Exchange
from gateway.normalize import normalize_path
from gateway.serve import Gateway
from tests.test_attacks import MalformedResponseError, Response, parse_responses

KNOWN_STATUSES = frozenset({200, 400, 401, 403, 404, 405, 413, 414, 431, 502, 503, 504})
CREDENTIAL_OR_IDENTITY = frozenset(
    {
        "authorization",
        "x-appsecret-proof",
        "x-appsecret-time",
        "x-auth-subject",
        "x-auth-client-id",
        "x-auth-scope",
        "x-auth-grant",
        "proxy-authorization",
    }
)
IDLE = 0.25  # seconds without a byte after which a connection that owes answers is given up
FUZZ_BUDGET = 25.0  # seconds; examples past it are skipped (keeps CI bounded on slow machines)


# --------------------------------------------------------------------------- the live stack
class LiveStack:
    """An upstream and a gateway served by an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.gateway: Any = None
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.seen: list[dict[str, Any]] = []
        self.loop_errors: list[str] = []
        self.handler_errors: list[str] = []
        self.started = time.monotonic()

    def __repr__(self) -> str:
        return f"LiveStack(port={self.port})"

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        def loop_errors(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

        self.loop.set_exception_handler(loop_errors)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        async def record(request: web.Request) -> web.Response:
            with contextlib.suppress(Exception):
                await request.read()
            self.seen.append(
                {
                    "method": request.method,
                    "path": request.raw_path.split("?")[0],
                    "query": request.query_string,
                    "headers": [k.lower() for k in request.headers],
                }
            )
            return web.Response(text="ok")

        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", record)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        upstream_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        cfg = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": None,
            "log": {"format": "json", "access": False},
            "limits": {"max_body": "64KiB", "max_url_bytes": "4KiB", "max_header_bytes": "8KiB"},
            "upstreams": {
                "api": {
                    "url": f"http://127.0.0.1:{upstream_port}",
                    "timeout": "1s",
                    "connect_timeout": "1s",
                }
            },
            "routes": [
                {"name": "admin", "path_prefix": "/admin", "upstream": "api", "scopes": ["admin"]},
                {"name": "api", "path_prefix": "/api", "upstream": "api"},
                {"name": "exact", "path": "/pub/exact", "upstream": "api", "auth": "public"},
                {"name": "pub", "path_prefix": "/pub/", "upstream": "api", "auth": "public"},
            ],
        }
        self.gateway = gw = Gateway(parse_config(cfg))
        await gw.start()
        self.port = gw.ports["listen"]
        assert gw.ctx is not None
        inner = gw.ctx.handler

        def watched(ex: Exchange) -> None:
            # the handler answers synchronously or continues in a task it starts itself
            try:
                inner(ex)
            except Exception as exc:
                self.handler_errors.append(f"{type(exc).__name__}: {exc} on {ex.head.path!r}")
                raise

        gw.ctx.handler = watched

    def stop(self) -> None:
        async def _stop() -> None:
            await self.gateway.close()
            assert self.runner is not None
            await self.runner.cleanup()

        try:
            self.run(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            assert self.thread is not None
            self.thread.join(5)
            self.loop.close()

    def public_route(self, method: str, path: str) -> bool:
        """Whether the gateway itself routes this (normalised) path to a public route."""
        rt = self.gateway.runtime
        route = rt.routes.match(method, None, path)
        return route is not None and route.auth is None


@pytest.fixture
def live() -> Iterator[LiveStack]:
    stack = LiveStack()
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


# --------------------------------------------------------------------------- raw exchanges
def exchange(port: int, data: bytes, owed: int, methods: tuple[str, ...]) -> tuple[bytes, bool]:
    """Send `data`; read until closed, `owed` answers arrived, or IDLE seconds of silence."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    raw = b""
    closed = False
    try:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], IDLE)
            if not ready:
                break
            try:
                chunk = sock.recv(65536)
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            with contextlib.suppress(MalformedResponseError):
                if len(parse_responses(raw, False, methods)) >= owed:
                    break
    finally:
        sock.close()
    return raw, closed


def assert_well_formed(responses: list[Response], methods: tuple[str, ...]) -> None:
    for index, resp in enumerate(responses):
        assert resp.status in KNOWN_STATUSES, resp.raw
        ids = resp.all("x-request-id")
        assert len(ids) == 1, resp.raw
        if resp.status >= 400 and resp.status not in (502, 503, 504):
            assert resp.header("content-type") == "application/json", resp.raw
            head = index < len(methods) and methods[index] == "HEAD"
            assert head or b'"error"' in resp.body, resp.raw


# --------------------------------------------------------------------------- request strategies
METHODS = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "get",
    "GE T",
    "PRI",
    "CONNECT",
    "TRACE",
    "PROPFIND",
    "",
    "G\x00T",
    "POST\t",
    "X" * 40,
]
TARGETS = [
    "/pub/a",
    "/pub/exact",
    "/pub/",
    "/api/x",
    "/admin",
    "/admin/",
    "/pub/../admin",
    "/pub/%2e%2e/admin",
    "/pub/..%2fadmin",
    "//admin",
    "/pub/..;/admin",
    "/pub/.%2E/admin/x",
    "/pub/%c0%ae/x",
    "/pub/a?access_token=abc&x=1",
    "/pub/a?appsecret_proof=00",
    "*",
    "http://x/pub/a",
    "http://x/admin",
    "https://user@x:8080/pub/b?q",
    "pub/a",
    "/pub/a#f",
    "/pub/\\admin",
    "/pub/%00",
    "/pub/%zz",
    "/PUB/a",
    "/pub/" + "a" * 5000,
    "/",
    "/oauth20/access-token",
    "/pub/a b",
    "/pub/\xe9",
    "/pub/a%",
]
TARGET_CHARS = st.sampled_from([*"/.%2eEfF5cC0aA;?#&=\\ \t\x00\x7f\xe9+~-_", "..", "%2f"])
VERSIONS = [
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "HTTP/0.9",
    "HTTP/1.10",
    "http/1.1",
    "HTTP/1.1 ",
    "HTTP/1",
    "",
    "HTTP/9.9",
]
HEADER_NAMES = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Authorization",
    "X-Request-Id",
    "X-Auth-Subject",
    "X_Auth_Scope",
    "x-auth-client-id",
    "X-AUTH-GRANT",
    "Expect",
    "Upgrade",
    "X-Appsecret-Proof",
    "X-Forwarded-For",
    "Content-Type",
    "Te",
    "Trailer",
    "Keep-Alive",
    "Proxy-Authorization",
    "X-Custom",
    "Transfer-Encoding ",
    " Transfer-Encoding",
    "Content_Length",
    "",
    "Bad\x00Name",
    "Bad Name",
    "X\xe9",
]
HEADER_VALUES = [
    "x",
    "chunked",
    "chunked, identity",
    "identity",
    "xchunked",
    " chunked",
    "\tchunked",
    "0",
    "5",
    "-1",
    "+5",
    "5, 5",
    "99999999999999999999",
    "0x10",
    "close",
    "keep-alive",
    "Upgrade",
    "X-Auth-Subject",
    "websocket",
    "100-continue",
    "Bearer abc",
    "Bearer ",
    "Basic Zm9vOmJhcg==",
    "admin",
    "application/x-www-form-urlencoded",
    "a\rb",
    "a\nb",
    "a\x00b",
    "caf\xe9",
    "\x7f",
    "trailers",
    "",
]
EOL = st.sampled_from(["\r\n"] * 8 + ["\n", "\r", "\r\r\n"])


MUTATIONS = [
    "method",
    "target",
    "target-char",
    "version",
    "eol",
    "framing",
    "chunks",
    "headers",
    "fold",
    "no-host",
]


@st.composite
def header_line(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(HEADER_NAMES) | st.text("abcXYZ-_:\t\x00\xe9 ", max_size=12))
    value = draw(
        st.sampled_from(HEADER_VALUES) | st.text('ab1 \t\r\n\x00\x0b\x7f\xe9,;="', max_size=16)
    )
    sep = draw(st.sampled_from([": "] * 6 + [":", " : ", ":\t", "", ": \r\n "]))
    return f"{name}{sep}{value}"


@st.composite
def chunked_body(draw: st.DrawFn, broken: bool) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.text("abcGET /admin\r\n", max_size=12))
        size, crlf = f"{len(data):x}", "\r\n"
        if broken and draw(st.booleans()):
            sizes = [
                f"{len(data) + 1:x}",
                f"{len(data):X}",
                "ffffffffffffffffff",
                "-1",
                "0x1",
                f"{len(data):x};ext=1",
                f"{len(data):x}\t",
                " 1",
                "",
            ]
            size = draw(st.sampled_from(sizes))
        if broken and draw(st.booleans()):
            crlf = draw(EOL)
        parts.append(size + crlf + data + crlf)
    last = "0\r\n\r\n"
    if broken and draw(st.booleans()):
        lasts = [
            "0\r\nX-Trailer: 1\r\n\r\n",
            "0\n\n",
            "0\r\n",
            "",
            "0;x\r\n\r\n",
            "00\r\n\r\n",
            "0\r\nAuthorization: Bearer abc\r\nX-Auth-Subject: root\r\n\r\n",
        ]
        last = draw(st.sampled_from(lasts))
    return "".join(parts) + last


@st.composite
def request(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid request with up to three mutations (as bytes), and its method."""
    mutations = draw(st.sets(st.sampled_from(MUTATIONS), max_size=3))
    method = draw(st.sampled_from(METHODS if "method" in mutations else METHODS[:7]))
    target = draw(st.sampled_from(TARGETS if "target" in mutations else TARGETS[:4]))
    if "target-char" in mutations:
        pos = draw(st.integers(0, len(target)))
        target = target[:pos] + draw(TARGET_CHARS) + target[pos:]
    version = draw(st.sampled_from(VERSIONS)) if "version" in mutations else "HTTP/1.1"
    eol = draw(EOL) if "eol" in mutations else "\r\n"
    headers = ["Host: x"]
    body = ""
    framings = ["length-wrong", "both", "twice"] if "framing" in mutations else ["none", "length"]
    framing = "chunked" if "chunks" in mutations else draw(st.sampled_from([*framings, "chunked"]))
    payload = draw(st.text("abc=&GET /admin HTTP/1.1\r\n", max_size=40))
    if framing == "length":
        headers.append(f"Content-Length: {len(payload.encode('latin-1'))}")
        body = payload
    elif framing == "length-wrong":
        headers.append(f"Content-Length: {draw(st.integers(0, 80))}")
        body = payload
    elif framing == "chunked":
        headers.append("Transfer-Encoding: chunked")
        body = draw(chunked_body("chunks" in mutations))
    elif framing == "both":
        headers += ["Content-Length: 5", "Transfer-Encoding: chunked"]
        body = draw(chunked_body(False))
    elif framing == "twice":
        name = draw(st.sampled_from(["Content-Length: 3", "Transfer-Encoding: chunked", "Host: y"]))
        headers += [name, name]
        body = "abc"
    if "headers" in mutations:
        headers += draw(st.lists(header_line(), min_size=1, max_size=3))
    if draw(st.booleans()):
        headers.append("Connection: close")
    draw(st.randoms(use_true_random=False)).shuffle(headers)
    if "fold" in mutations:
        headers[0] = " " + headers[0]  # obs-fold of the request line or previous header
    if "no-host" in mutations:
        headers = [h for h in headers if not h.startswith("Host")]
    head = f"{method} {target} {version}".rstrip(" ") if version else f"{method} {target}"
    text = head + eol + eol.join(headers) + eol + eol + body
    return text.encode("latin-1"), method


@st.composite
def attempt(draw: st.DrawFn) -> tuple[bytes, int, tuple[str, ...]]:
    """Raw bytes to send, how many answers at most are owed, and the methods in order."""
    first, method = draw(request())
    data, methods = first, [method]
    mode = draw(st.sampled_from(["single", "single", "pipelined", "pipelined-clean", "truncated"]))
    if mode == "pipelined":
        second, method2 = draw(request())
        data += second
        methods.append(method2)
    elif mode == "pipelined-clean":
        data += (
            b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: root\r\nConnection: close\r\n\r\n"
        )
        methods.append("GET")
    elif mode == "truncated":
        data = data[: draw(st.integers(1, max(1, len(data) - 1)))]
    return data, len(methods), tuple(methods)


# --------------------------------------------------------------------------- the property
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=attempt())
def test_parser_fuzz(live: LiveStack, case: tuple[bytes, int, tuple[str, ...]]) -> None:
    """Mutated raw requests never crash the gateway, get well-formed answers, never leak upstream."""
    if time.monotonic() - live.started > FUZZ_BUDGET:
        return  # time budget spent: the remaining examples pass trivially
    data, owed, methods = case
    before = len(live.seen)
    raw, closed = exchange(live.port, data, owed, methods)
    try:
        responses = parse_responses(raw, closed, methods)
    except MalformedResponseError:
        if "HEAD" not in methods:
            raise
        # A HEAD that llhttp could not parse is answered as an unknown request, with a body.
        responses = parse_responses(raw, closed, ())
    assert_well_formed(responses, methods)
    event(f"statuses {[r.status for r in responses]}")
    assert len(responses) <= owed + 1, raw
    # The gateway is alive and well after every example.
    alive, _ = exchange(
        live.port, b"GET /pub/alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1, ()
    )
    assert alive.startswith(b"HTTP/1.1 200 "), alive[:200]
    assert live.handler_errors == []
    assert live.loop_errors == []
    for entry in live.seen[before:]:
        path = entry["path"]
        assert normalize_path(path) == path, entry
        assert live.public_route(entry["method"], path), entry
        assert not CREDENTIAL_OR_IDENTITY & {h.replace("_", "-") for h in entry["headers"]}, entry
        assert "access_token" not in entry["query"] and "appsecret" not in entry["query"], entry
