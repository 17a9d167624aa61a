"""An attacker's view of the gateway: every test runs a real gateway and a real upstream.

Path-normalisation bypasses, request smuggling on raw sockets, header injection, token
placement games, appsecret_proof replay and tokens leaking into logs (SPEC sections 3-7).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from gateway.proof import compute_proof
from tests.fixtures.servers import base_config

APP_ID = "app1"
APP_SECRET = "s3cret-one"
OLD_SECRET = "s3cret-old"
IDENTITY = ("x-auth-subject", "x-auth-client-id", "x-auth-scope", "x-auth-grant")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9]{2}) [^\r\n]*$")
_HEADER_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n\x00]*?)[ \t]*$")


# --------------------------------------------------------------------------- raw HTTP helpers
class MalformedResponseError(AssertionError):
    """The bytes the gateway wrote are not a well-formed HTTP/1.1 response."""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_responses(data: bytes, closed: bool, methods: tuple[str, ...] = ()) -> list[Response]:
    """Strictly parse every complete response in `data`; raise if the bytes are malformed.

    `methods` are the request methods in order (a HEAD answer has no body). Trailing bytes of
    an incomplete response are an error only once the connection is closed.
    """
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if closed:
                raise MalformedResponseError(f"truncated head: {data[pos : pos + 200]!r}")
            break
        lines = data[pos:end].split(b"\r\n")
        status_match = _STATUS_LINE.match(lines[0])
        if status_match is None:
            raise MalformedResponseError(f"bad status line: {lines[0][:200]!r}")
        status = int(status_match.group(1))
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            header_match = _HEADER_LINE.match(line)
            if header_match is None:
                raise MalformedResponseError(f"bad header line: {line[:200]!r}")
            headers.append(
                (header_match.group(1).decode().lower(), header_match.group(2).decode("latin-1"))
            )
        body_start = end + 4
        names = [n for n, _ in headers]
        if names.count("content-length") > 1 or names.count("transfer-encoding") > 1:
            raise MalformedResponseError("duplicate framing headers")
        if "content-length" in names and "transfer-encoding" in names:
            raise MalformedResponseError("content-length and transfer-encoding together")
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        te = next((v for n, v in headers if n == "transfer-encoding"), None)
        cl = next((v for n, v in headers if n == "content-length"), None)
        if status < 200 or status in (204, 304) or method == "HEAD":
            body, pos = b"", body_start
        elif te is not None:
            if te.lower() != "chunked":
                raise MalformedResponseError(f"unknown transfer-encoding {te!r}")
            parsed = _dechunk(data, body_start, closed)
            if parsed is None:
                break
            body, pos = parsed
        elif cl is not None:
            if not cl.isdigit():
                raise MalformedResponseError(f"bad content-length {cl!r}")
            if len(data) < body_start + int(cl):
                if closed:
                    raise MalformedResponseError("body shorter than content-length")
                break
            body, pos = data[body_start : body_start + int(cl)], body_start + int(cl)
        else:
            if not closed:
                break  # close-delimited: complete only once the connection is closed
            body, pos = data[body_start:], len(data)
        if status >= 200 or status == 101:
            out.append(Response(status, headers, body, data[: end + 4]))
        if status == 101:
            break
    return out


def _dechunk(data: bytes, pos: int, closed: bool) -> tuple[bytes, int] | None:
    body = b""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            if closed:
                raise MalformedResponseError("truncated chunk size")
            return None
        size_text = data[pos:eol].split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
            raise MalformedResponseError(f"bad chunk size {size_text!r}")
        size = int(size_text, 16)
        if size == 0:
            trailer_end = (
                data.find(b"\r\n", eol + 2) if data[eol + 2 : eol + 4] != b"\r\n" else eol + 2
            )
            if trailer_end < 0:
                if closed:
                    raise MalformedResponseError("truncated last chunk")
                return None
            return body, trailer_end + 2
        if len(data) < eol + 2 + size + 2:
            if closed:
                raise MalformedResponseError("truncated chunk")
            return None
        body += data[eol + 2 : eol + 2 + size]
        if data[eol + 2 + size : eol + 4 + size] != b"\r\n":
            raise MalformedResponseError("chunk not followed by CRLF")
        pos = eol + 4 + size


@dataclass
class Exchanged:
    responses: list[Response]
    closed: bool
    raw: bytes

    @property
    def first(self) -> Response:
        assert self.responses, f"no response: {self.raw[:300]!r}"
        return self.responses[0]


async def send_raw(
    port: int,
    data: bytes,
    *,
    expect: int = 1,
    timeout: float = 2.0,
    methods: tuple[str, ...] = (),
) -> Exchanged:
    """Write raw bytes; read until the server closes, or `expect` answers and a short quiet spell."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b""
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            enough = len(parse_responses(raw, False, methods)) >= expect
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.15 if enough else left)
            except TimeoutError:
                if enough:
                    break
                continue
            if not chunk:
                closed = True
                break
            raw += chunk
    except ConnectionResetError:
        closed = True
    finally:
        writer.close()
    return Exchanged(parse_responses(raw, closed, methods), closed, raw)


# --------------------------------------------------------------------------- the stack under test
@dataclass
class Recorder:
    """An upstream that records every request it parsed (method, raw path, headers, body)."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        return [s["path"] for s in self.seen]


@pytest.fixture
async def recorder(aiohttp_server: Any) -> Recorder:
    state = Recorder()

    async def record(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionResetError:
            body = b""
        entry = {
            "method": request.method,
            "path": request.raw_path.split("?")[0],
            "query": request.query_string,
            "headers": [(k.lower(), v) for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        }
        state.seen.append(entry)
        return web.Response(body=orjson.dumps(entry), content_type="application/json")

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    state.port = server.port
    return state


def attack_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """One config for every attack: token routes, a proof route, a public route, form tokens."""
    routes = [
        {"name": "admin", "path_prefix": "/admin", "upstream": "api", "scopes": ["admin"]},
        {"name": "api", "path_prefix": "/api", "upstream": "api"},
        {
            "name": "proof",
            "path_prefix": "/proof",
            "upstream": "api",
            "appsecret_proof": "required",
        },
        {"name": "public", "path_prefix": "/public/", "upstream": "api", "auth": "public"},
    ]
    cfg = base_config(
        upstream_url,
        routes=routes,
        apps=[{"client_id": APP_ID, "secrets": [APP_SECRET, OLD_SECRET], "proof_max_age": "60s"}],
        tokens={"form_param": True, "query_param": True},
        log={"format": "json", "access": True},
    )
    cfg.update(overrides)
    return cfg


async def issue(gw: Any, subject: str = "alice", scope: str = "admin read", **kw: Any) -> str:
    validator = gw.gateway.runtime.validator
    return str(
        await validator.issue(
            kw.get("grant", "authorization_code"), kw.get("client_id", APP_ID), subject, scope
        )
    )


def get(target: bytes | str, *headers: bytes | str, close: bool = True) -> bytes:
    """A GET request for `target` with extra header lines."""
    t = target.encode("latin-1") if isinstance(target, str) else target
    lines = [b"GET " + t + b" HTTP/1.1", b"Host: x"]
    lines += [h.encode("latin-1") if isinstance(h, str) else h for h in headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def identity_seen(entry: dict[str, Any]) -> dict[str, list[str]]:
    """The identity headers the upstream received, keyed by canonical name (`_` read as `-`)."""
    out: dict[str, list[str]] = {}
    for name, value in entry["headers"]:
        key = name.lower().replace("_", "-")
        if key in IDENTITY:
            out.setdefault(key, []).append(value)
    return out


# =========================================================================== 1. path bypasses
# (raw request target, allowed statuses). Without a token nothing may reach the upstream.
BYPASSES: list[tuple[bytes, set[int]]] = [
    (b"/admin", {401}),
    (b"/admin/", {401}),
    (b"/admin/users", {401}),
    (b"/public/../admin", {401}),
    (b"/public/%2e%2e/admin", {401}),
    (b"/public/%2E%2e/admin", {401}),
    (b"/public/.%2E/admin", {401}),
    (b"/public/%2e./admin/", {401}),
    (b"/public/..%2fadmin", {400}),
    (b"/public%2f..%2fadmin", {400}),
    (b"/public/..%2Fadmin", {400}),
    (b"/public/..%5cadmin", {400}),
    (b"/public/..%5Cadmin", {400}),
    (b"/public/..\\admin", {400}),
    (b"/public\\..\\admin", {400}),
    (b"\\admin", {400}),
    (b"//admin", {401}),
    (b"///admin//", {401}),
    (b"/./admin", {401}),
    (b"/public/./../admin", {401}),
    (b"/public/x/../../admin", {401}),
    (b"/public/..;/admin", {400}),
    (b"/public/..;jsessionid=1/admin", {400}),
    (b"/public/.;/../admin", {400}),
    (b"/%2e%2e/admin", {400}),
    (b"/public/../../admin", {400}),
    (b"/%61dmin", {401}),
    (b"/%61%64%6D%69%6E", {401}),
    (b"/%41DMIN", {404}),
    (b"/ADMIN", {404}),
    (b"/Admin/users", {404}),
    (b"/admin%00", {400}),
    (b"/admin%00/x", {400}),
    (b"/public/%00/../admin", {400}),
    (b"/admin%2f", {400}),
    (b"/admin%09", {400}),
    (b"/public/%0d%0a/../admin", {400}),
    (b"/public/%u002e%u002e/admin", {400}),
    (b"/public/%2", {400}),
    (b"/public/%zz/../admin", {400}),
    (b"http://x/public/../admin", {401}),
    (b"/public/..%00/admin", {400}),
]
BYPASS_IDS = [
    "admin",
    "admin-slash",
    "admin-sub",
    "dotdot",
    "enc-dotdot",
    "enc-dotdot-mixed-case",
    "half-enc-dotdot",
    "half-enc-dotdot-2",
    "enc-slash",
    "enc-slash-everywhere",
    "enc-slash-upper",
    "enc-backslash",
    "enc-backslash-upper",
    "raw-backslash",
    "raw-backslashes",
    "backslash-root",
    "double-slash",
    "many-slashes",
    "dot-segment",
    "dot-then-dotdot",
    "dotdot-twice",
    "tomcat-dotdot-semicolon",
    "tomcat-dotdot-params",
    "tomcat-dot-semicolon",
    "enc-dotdot-above-root",
    "dotdot-above-root",
    "enc-unreserved-letter",
    "enc-all-letters",
    "enc-uppercase-letter",
    "uppercase",
    "capitalised",
    "nul-escape",
    "nul-escape-segment",
    "nul-escape-before-dotdot",
    "enc-slash-trailing",
    "enc-tab",
    "enc-crlf",
    "iis-unicode-escape",
    "truncated-escape",
    "bad-hex-escape",
    "absolute-form-dotdot",
    "dotdot-nul",
]


@pytest.mark.parametrize(("target", "allowed"), BYPASSES, ids=BYPASS_IDS)
async def test_path_bypass_without_token_never_reaches_upstream(
    recorder, make_gateway, target, allowed
):
    """Every spelling of an admin path is routed to the admin route (401) or refused, never served."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, get(target))
    assert res.first.status in allowed, res.first.raw
    if res.first.status == 400:
        assert res.first.json()["error"] == "invalid_request"
        assert res.closed
    if res.first.status == 401:
        assert res.first.json()["error"] == "missing_token"
    assert recorder.seen == []


OVERLONG = [
    b"/public/%c0%ae%c0%ae/admin",
    b"/public/%C0%AE%C0%AE/admin",
    b"/public/%e0%80%ae%e0%80%ae/admin",
    b"/public/..%c0%afadmin",
    b"/public/..%c1%9cadmin",
]


@pytest.mark.parametrize(
    "target",
    OVERLONG,
    ids=[
        "overlong-dot",
        "overlong-dot-upper",
        "overlong-dot-3byte",
        "overlong-slash",
        "overlong-bs",
    ],
)
async def test_overlong_utf8_escapes_are_not_served_by_public_route(recorder, make_gateway, target):
    """Overlong UTF-8 encodings of dot, slash and backslash are refused, never served publicly."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, get(target))
    assert res.first.status in (400, 401)
    assert recorder.seen == []


async def test_double_encoding_is_decoded_once_only(recorder, make_gateway):
    """A double-encoded dot-dot stays encoded upstream: the gateway never decodes `%25`."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, get(b"/public/%252e%252e/admin"))
    assert res.first.status == 200
    assert recorder.paths == ["/public/%252e%252e/admin"]


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        (b"/public/../admin", "/admin"),
        (b"/public/%2e%2e/admin/x", "/admin/x"),
        (b"//admin//x/./", "/admin/x/"),
        (b"/%61dmin", "/admin"),
        (b"/admin/y/..", "/admin/"),
    ],
    ids=["dotdot", "enc-dotdot", "slashes-and-dot", "enc-letter", "trailing-dotdot"],
)
async def test_with_admin_token_upstream_gets_the_normalised_admin_path(
    recorder, make_gateway, target, upstream_path
):
    """With an admin token, odd spellings reach the upstream only as their normalised path."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    res = await send_raw(gw.port, get(target, f"Authorization: Bearer {token}"))
    assert res.first.status == 200
    assert recorder.paths == [upstream_path]
    assert identity_seen(recorder.seen[0])["x-auth-subject"] == ["alice"]


# =========================================================================== 2. smuggling
SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: root\r\nConnection: close\r\n\r\n"
_P = b"POST /public/a HTTP/1.1\r\nHost: x\r\n"


def _cl(n: int | bytes) -> bytes:
    return b"Content-Length: " + (str(n).encode() if isinstance(n, int) else n) + b"\r\n"


# (raw bytes, "400" or the list of paths the upstream must see, in order)
SMUGGLING: list[tuple[bytes, str | list[str]]] = [
    (
        _P + _cl(5 + len(SMUGGLED)) + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        "400",
    ),
    (
        _P
        + b"Transfer-Encoding: chunked\r\n"
        + _cl(5 + len(SMUGGLED))
        + b"\r\n0\r\n\r\n"
        + SMUGGLED,
        "400",
    ),
    (_P + _cl(3) + _cl(3) + b"\r\nabc" + SMUGGLED, "400"),
    (_P + _cl(3) + _cl(3 + len(SMUGGLED)) + b"\r\nabc" + SMUGGLED, "400"),
    (_P + _cl(3 + len(SMUGGLED)) + _cl(3) + b"\r\nabc" + SMUGGLED, "400"),
    (_P + _cl(b"3, 3") + b"\r\nabc" + SMUGGLED, "400"),
    (_P + _cl(b"+3") + b"\r\nabc" + SMUGGLED, "400"),
    (_P + _cl(b"0x3") + b"\r\nabc" + SMUGGLED, "400"),
    (_P + _cl(b"-1") + b"\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"X-Padding: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\x0c\r\n\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: identity\r\n" + _cl(3) + b"\r\nabc" + SMUGGLED, "400"),
    (
        b"POST /public/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        "400",
    ),
    (
        _P + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
        "400",
    ),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n3;ext\nabc\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc" + SMUGGLED + b"0\r\n\r\n", "400"),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n" + SMUGGLED, "400"),
    (b"POST /public/a HTTP/1.1\nHost: x\nContent-Length: 3\n\nabc" + SMUGGLED, "400"),
    (b"GET /public/%2f HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, "400"),
    # accepted, but as the one request the client framed: the smuggled part is a second request
    (_P + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, ["/public/a"]),
    (_P + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n" + SMUGGLED, ["/public/a"]),
    (_P + b"Transfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\n\r\n" + SMUGGLED, ["/public/a"]),
    (_P + _cl(b"003") + b"\r\nabc" + SMUGGLED, ["/public/a"]),
    (_P + _cl(0) + b"\r\n" + SMUGGLED, ["/public/a"]),
    (
        b"GET /public/a HTTP/1.1\r\nHost: x\r\n"
        + _cl(len(SMUGGLED))
        + b"\r\n"
        + SMUGGLED
        + b"GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ["/public/a"],
    ),
]
SMUGGLING_IDS = [
    "cl-te",
    "te-cl",
    "duplicate-cl",
    "cl-then-bigger-cl",
    "cl-then-smaller-cl",
    "cl-list",
    "cl-plus",
    "cl-hex",
    "cl-negative",
    "te-chunked-identity",
    "te-identity-chunked",
    "te-xchunked",
    "te-chunkedx",
    "te-obs-fold-value",
    "te-obs-fold-name",
    "te-leading-tab-line",
    "te-space-before-colon",
    "te-chunked-then-x",
    "te-vertical-tab",
    "te-form-feed",
    "te-identity-with-cl",
    "te-in-http10",
    "chunk-size-overflow",
    "chunk-ext-bare-lf",
    "chunk-size-bare-lf",
    "chunk-data-bare-lf",
    "chunk-data-too-long",
    "chunk-size-0x",
    "chunk-size-negative",
    "chunk-size-trailing-space",
    "bare-lf-head",
    "bad-path-then-pipelined",
    "te-ows-tab",
    "te-uppercase",
    "chunk-extension",
    "cl-leading-zeros",
    "cl-zero-then-pipelined",
    "get-body-is-a-request",
]


@pytest.mark.parametrize(("raw", "outcome"), SMUGGLING, ids=SMUGGLING_IDS)
async def test_smuggling(recorder, make_gateway, raw, outcome):
    """Ambiguous framing is 400 and closes; accepted framing yields exactly the framed requests."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, raw, expect=2)
    assert "/admin" not in recorder.paths
    if outcome == "400":
        assert [r.status for r in res.responses] == [400], res.raw
        assert res.first.header("connection") == "close"
        assert res.closed
        assert recorder.seen == []
    else:
        assert recorder.paths == outcome
        assert res.first.status == 200
        assert [r.status for r in res.responses[1:]] in ([], [401])
        for entry in recorder.seen:
            assert "root" not in str(identity_seen(entry))


async def test_get_body_reaches_upstream_as_body(recorder, make_gateway):
    """A request hidden in a GET body is relayed as that body with its length, never parsed."""
    gw = await make_gateway(attack_config(recorder.url))
    raw = b"GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + _cl(len(SMUGGLED))
    res = await send_raw(gw.port, raw + b"\r\n" + SMUGGLED)
    assert res.first.status == 200
    assert recorder.paths == ["/public/a"]
    assert recorder.seen[0]["body"] == SMUGGLED.decode()
    assert ("content-length", str(len(SMUGGLED))) in recorder.seen[0]["headers"]


async def test_refused_request_with_unsent_body_closes_connection(recorder, make_gateway):
    """A 401 sent before the body arrives closes the connection: the body is never parsed."""
    gw = await make_gateway(attack_config(recorder.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"POST /admin HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        + _cl(len(SMUGGLED))
        + b"\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 401")
    writer.write(SMUGGLED.replace(b"/admin", b"/public/x"))
    try:
        rest = await asyncio.wait_for(reader.read(), 2)
    except ConnectionResetError:
        rest = b""  # closed with our unread body in its buffer: a reset is a close too
    writer.close()
    assert b"HTTP/1.1" not in rest
    assert recorder.seen == []


@pytest.mark.parametrize("where", ["token-route", "public-route"])
async def test_trailer_fields_never_become_request_headers(recorder, make_gateway, where):
    """Trailer fields neither authenticate a request nor reach the upstream as headers."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    path = b"/admin/x" if where == "token-route" else b"/public/x"
    raw = (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nX-Promoted: 1\r\n\r\n"
    )
    res = await send_raw(gw.port, raw)
    if where == "token-route":
        assert res.first.status in (400, 401)
        assert recorder.seen == []
    else:
        assert res.first.status == 200
        assert "x-promoted" not in {n for n, _ in recorder.seen[0]["headers"]}


async def test_upgrade_refused_by_upstream_does_not_tunnel_pipelined_bytes(recorder, make_gateway):
    """After an Upgrade the upstream declines, bytes that followed never reach it as a request."""
    gw = await make_gateway(attack_config(recorder.url))
    raw = (
        b"GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + SMUGGLED
    )
    res = await send_raw(gw.port, raw, expect=2)
    assert res.first.status == 200
    assert recorder.paths == ["/public/a"]
    assert "http2-settings" not in {n for n, _ in recorder.seen[0]["headers"]}


async def test_h2c_upgrade_is_not_relayed(recorder, make_gateway):
    """`Upgrade: h2c` is answered as plain HTTP/1.1: the upstream never sees an Upgrade request."""
    gw = await make_gateway(attack_config(recorder.url))
    raw = (
        b"GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    res = await send_raw(gw.port, raw)
    assert res.first.status == 200
    names = {n for n, _ in recorder.seen[0]["headers"]}
    assert "upgrade" not in names
    assert (
        "connection" not in names
        or "upgrade" not in dict(recorder.seen[0]["headers"]).get("connection", "").lower()
    )
    with_body = raw.replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\nabc")
    res = await send_raw(gw.port, with_body)
    assert res.first.status == 400
    assert len(recorder.seen) == 1


async def test_upgrade_on_token_route_without_token_is_401(recorder, make_gateway):
    """An Upgrade to a token route gets the same checks: no token, 401, nothing upstream."""
    gw = await make_gateway(attack_config(recorder.url))
    raw = get(b"/admin/ws", b"Upgrade: websocket", b"Connection: Upgrade", close=False)
    res = await send_raw(gw.port, raw + SMUGGLED)
    assert res.first.status == 401
    assert recorder.seen == []


@pytest.mark.parametrize(
    "body",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize("path", [b"/public/ws", b"/admin/ws"])
async def test_upgrade_with_body_is_refused_before_the_upstream(recorder, make_gateway, path, body):
    """A WebSocket Upgrade sent as POST with a body was forwarded with its Content-Length but
    never its body (llhttp hands those bytes over as the new protocol's), and the client got a
    504 even from an upstream answering at once. It is refused with 400 at once, on public and
    token routes alike (with a valid token), and nothing reaches the upstream."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    raw = (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n" + body + SMUGGLED
    )
    started = time.monotonic()
    res = await send_raw(gw.port, raw, expect=2)
    assert time.monotonic() - started < 1.5
    assert [r.status for r in res.responses] == [400]
    assert res.first.header("connection") == "close"
    assert res.closed
    assert recorder.seen == []


_WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3's example, for _WS_KEY
_WS_REQUEST = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: " + _WS_KEY + b"\r\n"
)


@pytest.mark.parametrize(
    ("request_lines", "answer"),
    [
        (_WS_REQUEST, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        (
            _WS_REQUEST,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        ),
        (
            _WS_REQUEST,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _WS_ACCEPT + b"\r\n\r\n",
        ),
        (
            b"",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _WS_ACCEPT + b"\r\n\r\n",
        ),
    ],
    ids=["bare-101", "wrong-accept", "other-protocol", "101-to-a-plain-request"],
)
async def test_upstream_101_without_a_websocket_handshake_opens_no_tunnel(
    make_gateway, request_lines, answer
):
    """WebSocket smuggling: an upstream endpoint that can be made to answer 101 (a status
    passed through, a health check of a given URL) without performing the client's WebSocket
    handshake would turn the client connection into a raw tunnel to the upstream, past every
    check of the gateway. A 101 opens a tunnel only as the answer to the client's WebSocket
    handshake (`Upgrade: websocket` and the Sec-WebSocket-Accept of its key); else 502."""
    after_head: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                after_head.append(chunk)
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway(attack_config(f"http://127.0.0.1:{port}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /public/ws HTTP/1.1\r\nHost: x\r\n" + request_lines + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        with contextlib.suppress(ConnectionError):
            writer.write(SMUGGLED)
            await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert b"/admin" not in b"".join(after_head)
    finally:
        server.close()


# ====================================================================== 2b. header fields: count, Host
def _fields(count: int, method: bytes = b"GET", extra: bytes = b"") -> bytes:
    """A request head of exactly `count` header fields, Host and `extra`'s lines among them."""
    own = 1 + extra.count(b"\r\n")
    lines = b"".join(b"X-F%d: v%d\r\n" % (i, i) for i in range(count - own))
    return method + b" /public/many HTTP/1.1\r\nHost: x\r\n" + extra + lines + b"\r\n"


async def test_header_count_limit(recorder, make_gateway):
    """limits.max_header_count (default 100): 100 fields reach the upstream, 101 are 431 and
    never do, whether the names differ or repeat."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, _fields(100))
    assert res.first.status == 200
    sent = {n for n, _ in recorder.seen[0]["headers"] if n[:3] == "x-f" and n[3:].isdigit()}
    assert len(sent) == 99
    for raw in (
        _fields(101),
        b"GET /public/x HTTP/1.1\r\nHost: x\r\n" + b"X-Same: 1\r\n" * 100 + b"\r\n",
    ):
        res = await send_raw(gw.port, raw + SMUGGLED)
        assert [r.status for r in res.responses] == [431]
        assert res.first.header("connection") == "close"
        assert res.closed
    assert len(recorder.seen) == 1


async def test_trailer_fields_do_not_count_against_header_count(recorder, make_gateway):
    """Trailer fields are dropped, never sent upstream: they count against max_header_bytes
    with the head, not against max_header_count (which bounds the fields kept)."""
    gw = await make_gateway(attack_config(recorder.url))
    head = _fields(100, b"POST", b"Transfer-Encoding: chunked\r\nConnection: close\r\n")
    trailers = b"".join(b"T-%d: t\r\n" % i for i in range(20))
    res = await send_raw(gw.port, head + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
    assert res.first.status == 200
    assert recorder.seen[0]["body"] == "abc"
    assert not any(n.startswith("t-") for n, _ in recorder.seen[0]["headers"])


async def test_header_count_limit_follows_reload(recorder, make_gateway, tmp_path):
    """A reload applies a new max_header_count like the other limits."""
    import yaml

    cfg = attack_config(recorder.url, limits={"max_header_count": 10})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    assert (await send_raw(gw.port, _fields(10))).first.status == 200
    assert (await send_raw(gw.port, _fields(11))).first.status == 431
    cfg["limits"]["max_header_count"] = 20
    path.write_text(yaml.safe_dump(cfg))
    logging_config = structlog.get_config()
    try:
        assert await gw.gateway.reload()
    finally:  # a reload configures logging for the process: later tests capture debug events
        structlog.configure(**logging_config)
    assert gw.gateway.ctx.max_header_count == 20
    assert (await send_raw(gw.port, _fields(11))).first.status == 200
    assert (await send_raw(gw.port, _fields(21))).first.status == 431
    assert len(recorder.seen) == 2


@pytest.mark.parametrize(
    "head",
    [
        b"GET /public/x HTTP/1.1\r\nHost:\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: \r\n",
        b"GET /public/x HTTP/1.1\r\nHost: \t  \t\r\n",
        b"GET /public/x HTTP/1.0\r\nHost:\r\n",
        b"GET /admin/x HTTP/1.1\r\nHost:\r\nAuthorization: Bearer TOKEN\r\n",
    ],
    ids=["empty", "space", "whitespace", "http10-empty", "token-route"],
)
async def test_empty_host_is_refused(recorder, make_gateway, head):
    """An empty (or blank) Host was forwarded as an empty Host and X-Forwarded-Host; like
    nginx, the gateway refuses it with 400 and nothing reaches the upstream."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    res = await send_raw(gw.port, head.replace(b"TOKEN", token.encode()) + b"\r\n" + SMUGGLED)
    assert [r.status for r in res.responses] == [400]
    assert res.first.json()["error"] == "invalid_request"
    assert res.closed
    assert recorder.seen == []


async def test_http10_without_host_is_still_accepted(recorder, make_gateway):
    """HTTP/1.0 may omit Host (RFC 9112 3.2 requires it of 1.1 only)."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, b"GET /public/old HTTP/1.0\r\n\r\n")
    assert res.first.status == 200
    assert recorder.paths == ["/public/old"]


# =========================================================================== 3. header injection
@pytest.mark.parametrize(
    "sent",
    [
        b"abc\rdef",
        b"abc\x00def",
        b"caf\xc3\xa9",
        b"\xff\xfe",
        b"a" * 129,
        b"abc%0d%0aX-Evil:%201",
        b"abc def",
        b"abc\tdef",
        b"<script>",
        b'"quoted"',
        b"a,b",
        b"",
    ],
    ids=[
        "cr",
        "nul",
        "utf8",
        "obs-text",
        "129-chars",
        "encoded-crlf",
        "space",
        "tab",
        "html",
        "quotes",
        "comma",
        "empty",
    ],
)
async def test_bad_request_id_is_replaced_never_echoed(recorder, make_gateway, sent):
    """An unsafe X-Request-Id is replaced by a generated one, sent upstream, never echoed back."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, get(b"/public/x", b"X-Request-Id: " + sent))
    rid = res.first.all("x-request-id")
    assert len(rid) == 1 and _REQUEST_ID.match(rid[0])
    assert rid[0].encode("latin-1") != sent
    if len(sent) > 2:
        assert sent not in res.raw
    if res.first.status == 200:
        ids = [v for n, v in recorder.seen[0]["headers"] if n == "x-request-id"]
        assert ids == rid
    else:
        assert res.first.status == 400
        assert recorder.seen == []


async def test_duplicate_request_id_sends_one_upstream(recorder, make_gateway):
    """Two X-Request-Id headers: the upstream and the client see one and the same id."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(
        gw.port, get(b"/public/x", b"X-Request-Id: good-1", b"X-Request-Id: evil\xc3\xa9")
    )
    assert res.first.all("x-request-id") == ["good-1"]
    assert [v for n, v in recorder.seen[0]["headers"] if n == "x-request-id"] == ["good-1"]


SPOOFS: list[list[bytes]] = [
    [b"X-Auth-Subject: mallory"],
    [b"x-auth-scope: admin superuser"],
    [b"X_Auth_Grant: client_credentials"],
    [b"X-AUTH-CLIENT-ID: evil-app"],
    [b"x_auth_subject: mallory"],
    [b"X-Auth_Client-Id: evil-app"],
    [b"Connection: X-Auth-Subject", b"X-Auth-Subject: mallory"],
    [
        b"Connection: keep-alive, x_auth_scope, X-AUTH-GRANT",
        b"X_Auth_Scope: all",
        b"X-Auth-Grant: x",
    ],
    [
        b"X-Auth-Subject: mallory",
        b"X-Auth-Subject: mallory2",
        b"x-auth-client-id: evil",
        b"X_AUTH_SCOPE: all",
        b"x-Auth-grant: implicit",
    ],
]
SPOOF_IDS = [
    "subject",
    "scope-lower",
    "grant-underscores",
    "client-id-upper",
    "subject-underscores-lower",
    "client-id-mixed-separators",
    "connection-named",
    "connection-named-underscores",
    "all-of-them",
]


@pytest.mark.parametrize("lines", SPOOFS, ids=SPOOF_IDS)
@pytest.mark.parametrize("route", ["public", "token"])
async def test_spoofed_identity_headers_never_reach_upstream(recorder, make_gateway, lines, route):
    """Client-sent X-Auth-* copies are dropped; token routes carry only the token's own values."""
    gw = await make_gateway(attack_config(recorder.url))
    extra = list(lines)
    if route == "token":
        token = await issue(gw, subject="alice", scope="read write", grant="authorization_code")
        extra.append(b"Authorization: Bearer " + token.encode())
    res = await send_raw(gw.port, get(b"/public/x" if route == "public" else b"/api/x", *extra))
    assert res.first.status == 200
    seen = identity_seen(recorder.seen[0])
    if route == "public":
        assert seen == {}
    else:
        assert seen == {
            "x-auth-subject": ["alice"],
            "x-auth-client-id": [APP_ID],
            "x-auth-scope": ["read write"],
            "x-auth-grant": ["authorization_code"],
        }
    for value in ("mallory", "evil", "superuser", "client_credentials"):
        assert value not in str(recorder.seen[0]["headers"])


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("subject", "alice\r\nX-Evil: 1"),
        ("subject", "alice\nX-Evil: 1"),
        ("subject", "alice\rX-Evil: 1"),
        ("subject", "alice\x00X-Evil: 1"),
        ("subject", "\u00e9lodie\u2028X-Evil: 1"),
        ("client_id", "app\r\nX-Evil: 1"),
        ("scope", "admin\r\nX-Evil: 1"),
    ],
    ids=[
        "subject-crlf",
        "subject-lf",
        "subject-cr",
        "subject-nul",
        "subject-unicode",
        "client-crlf",
        "scope-crlf",
    ],
)
async def test_token_fields_cannot_inject_upstream_headers(
    recorder, make_gateway, field_name, value
):
    """A token whose subject, client_id or scope holds CR/LF/NUL produces no new upstream header."""
    gw = await make_gateway(attack_config(recorder.url))
    kw = {"subject": "alice", "scope": "read", "client_id": "app2"}
    kw[field_name] = value
    validator = gw.gateway.runtime.validator
    token = await validator.issue("authorization_code", kw["client_id"], kw["subject"], kw["scope"])
    res = await send_raw(gw.port, get(b"/api/x", f"Authorization: Bearer {token}"))
    assert res.first.status == 200
    headers = recorder.seen[0]["headers"]
    assert "x-evil" not in {n for n, _ in headers}
    for name, found in identity_seen(recorder.seen[0]).items():
        assert len(found) == 1, name
        assert re.fullmatch(r"[\x20-\x7e]*", found[0]), found
    assert b"x-evil" not in res.raw.lower().split(b"\r\n\r\n", 1)[0]


# ====================================================== 3b. tokens changing on one connection
async def test_tokens_changing_on_one_keep_alive_connection(recorder, make_gateway):
    """A proxy in front may send many users' requests over one kept-alive connection: each
    request is judged by its own token (the per-connection memo of the last token's cache key
    never lets another token through), and a revocation applies to the very next request."""
    gw = await make_gateway(attack_config(recorder.url))
    alice, bob = await _two_tokens(gw)
    forged = alice[:-2] + ("AA" if alice[-2:] != "AA" else "BB")  # same length, last chars differ
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    raw = b""

    async def ask(*headers: str) -> Response:
        nonlocal raw
        count = len(parse_responses(raw, False))
        writer.write(get(b"/api/x", *headers, close=False))
        while len(parse_responses(raw, False)) == count:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, "the gateway closed the connection"
            raw += chunk
        return parse_responses(raw, False)[-1]

    try:
        sequence = [
            ("alice", alice, 200),
            ("bob", bob, 200),
            ("forged", forged, 401),
            ("alice", alice, 200),
            ("none", None, 401),
            ("alice", alice, 200),
        ]
        for who, token, status in sequence:
            res = await ask(f"Authorization: Bearer {token}") if token else await ask()
            assert res.status == status, who
        subjects = [identity_seen(e)["x-auth-subject"] for e in recorder.seen]
        assert subjects == [["alice"], ["bob"], ["alice"], ["alice"]]
        await gw.gateway.runtime.validator.revoke(alice)
        assert (await ask(f"Authorization: Bearer {alice}")).status == 401
        assert (await ask(f"Authorization: Bearer {bob}")).status == 200
        assert len(recorder.seen) == 5
        # The memo holds the raw Authorization value: any other spelling is parsed afresh,
        # and a value that merely starts like the remembered one is not the remembered one.
        for value, status in [
            (f"bearer {bob}", 200),
            (f"Bearer {bob}", 200),
            (f"Bearer {bob}!", 400),
            (f"Bearer {bob}x", 401),
            (f"Bearer {bob[:-1]}", 401),
            (f"Bearer {bob}", 200),
        ]:
            assert (await ask(f"Authorization: {value}")).status == status, value
        assert len(recorder.seen) == 8
        assert [identity_seen(e)["x-auth-subject"] for e in recorder.seen[4:]] == [["bob"]] * 4
    finally:
        writer.close()


# =========================================================================== 4. token placement
async def _two_tokens(gw: Any) -> tuple[str, str]:
    return await issue(gw), await issue(gw, subject="bob")


def _form(target: bytes, body: bytes, *headers: bytes) -> bytes:
    lines = [b"POST " + target + b" HTTP/1.1", b"Host: x", b"Connection: close"]
    lines += [b"Content-Type: application/x-www-form-urlencoded", _cl(len(body)).rstrip()]
    lines += list(headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


PLACEMENTS = {
    "header-and-query-same": lambda a, b: get(
        b"/api/x?access_token=" + a, b"Authorization: Bearer " + a
    ),
    "header-and-query-different": lambda a, b: get(
        b"/api/x?access_token=" + b, b"Authorization: Bearer " + a
    ),
    "header-twice": lambda a, b: get(
        b"/api/x", b"Authorization: Bearer " + a, b"Authorization: Bearer " + a
    ),
    "header-and-basic": lambda a, b: get(
        b"/api/x", b"Authorization: Bearer " + a, b"Authorization: Basic Zm9vOmJhcg=="
    ),
    "query-twice": lambda a, b: get(b"/api/x?access_token=" + a + b"&access_token=" + a),
    "query-twice-encoded-name": lambda a, b: get(
        b"/api/x?access_token=" + a + b"&access%5Ftoken=" + b
    ),
    "header-and-form": lambda a, b: _form(
        b"/api/x", b"access_token=" + a, b"Authorization: Bearer " + a
    ),
    "query-and-form": lambda a, b: _form(b"/api/x?access_token=" + a, b"access_token=" + b),
    "form-twice": lambda a, b: _form(b"/api/x", b"access_token=" + a + b"&access_token=" + b),
    "session-header-and-query": lambda a, b: get(
        b"/oauth20/access-token?access_token=" + a, b"Authorization: Bearer " + b
    ),
}


@pytest.mark.parametrize("build", list(PLACEMENTS.values()), ids=list(PLACEMENTS))
async def test_token_in_two_places_is_invalid_request(recorder, make_gateway, build):
    """A token sent two ways or twice is 400 invalid_request, unechoed, and never forwarded."""
    gw = await make_gateway(attack_config(recorder.url))
    a, b = await _two_tokens(gw)
    res = await send_raw(gw.port, build(a.encode(), b.encode()))
    assert res.first.status == 400
    assert res.first.json()["error"] == "invalid_request"
    assert a.encode() not in res.raw and b.encode() not in res.raw
    assert recorder.seen == []


async def test_query_token_plus_sign_in_name_is_not_a_second_token(recorder, make_gateway):
    """`access_token+` decodes to `access_token ` (a different name): one token, accepted."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    res = await send_raw(gw.port, get(b"/api/x?access_token=" + token.encode() + b"&x=1"))
    assert res.first.status == 200
    assert res.first.header("cache-control") == "private"
    assert recorder.seen[0]["query"] == "x=1"


HUGE = {
    "header-10kb": (lambda t: get(b"/api/x", b"Authorization: Bearer " + t), 10_000, {400, 431}),
    "header-100kb": (lambda t: get(b"/api/x", b"Authorization: Bearer " + t), 100_000, {400, 431}),
    "query-10kb": (lambda t: get(b"/api/x?access_token=" + t), 10_000, {400, 414}),
    "query-100kb": (lambda t: get(b"/api/x?access_token=" + t), 100_000, {400, 414}),
    "form-100kb": (lambda t: _form(b"/api/x", b"access_token=" + t), 100_000, {400, 413}),
    "proof-header-100kb": (
        lambda t: get(b"/proof/x", b"Authorization: Bearer abc", b"X-Appsecret-Proof: " + t),
        100_000,
        {400, 431},
    ),
}


@pytest.mark.parametrize(("build", "size", "allowed"), list(HUGE.values()), ids=list(HUGE))
async def test_huge_tokens_are_refused_unechoed(recorder, make_gateway, build, size, allowed):
    """10 KB and 100 KB tokens are refused (400/413/414/431) without echoing any of them."""
    gw = await make_gateway(attack_config(recorder.url))
    token = (b"Zq9" * (size // 3 + 1))[:size]
    res = await send_raw(gw.port, build(token))
    assert res.first.status in allowed
    assert b"Zq9Zq9Zq9" not in res.raw
    assert recorder.seen == []


MALFORMED_TOKENS = {
    "header-utf8": get(b"/api/x", b"Authorization: Bearer abc\xc3\xa9def"),
    "header-obs-text": get(b"/api/x", b"Authorization: Bearer abc\xffdef"),
    "header-control": get(b"/api/x", b"Authorization: Bearer abc\x01def"),
    "header-del": get(b"/api/x", b"Authorization: Bearer abc\x7fdef"),
    "header-tab-inside": get(b"/api/x", b"Authorization: Bearer abc\tdef"),
    "header-space-inside": get(b"/api/x", b"Authorization: Bearer abc def"),
    "header-comma": get(b"/api/x", b"Authorization: Bearer abc,def"),
    "header-quote": get(b"/api/x", b'Authorization: Bearer "abcdef"'),
    "query-nul": get(b"/api/x?access_token=abc%00def"),
    "query-utf8": get(b"/api/x?access_token=abc%C3%A9def"),
    "query-crlf": get(b"/api/x?access_token=abc%0D%0AX-Evil:%201"),
    "query-space": get(b"/api/x?access_token=abc+def"),
    "query-empty": get(b"/api/x?access_token="),
    "form-control": _form(b"/api/x", b"access_token=abc%01def"),
    "form-utf8": _form(b"/api/x", b"access_token=abc%E2%82%ACdef"),
}


@pytest.mark.parametrize("raw", list(MALFORMED_TOKENS.values()), ids=list(MALFORMED_TOKENS))
async def test_non_ascii_and_control_tokens_are_400(recorder, make_gateway, raw):
    """Tokens with non-ASCII, control or separator characters are 400 and never forwarded."""
    gw = await make_gateway(attack_config(recorder.url))
    res = await send_raw(gw.port, raw)
    assert res.first.status == 400
    assert res.first.json()["error"] == "invalid_request"
    assert b"abcdef" not in res.raw and b"def" not in res.first.body
    assert recorder.seen == []


@pytest.mark.parametrize("where", ["header", "query", "form"])
async def test_unknown_token_401_never_echoes_it(recorder, make_gateway, where):
    """An unknown token is 401 invalid_token; neither body nor challenge contains the token."""
    gw = await make_gateway(attack_config(recorder.url))
    token = b"UnknownTokenValue-1234567890abcdef"
    raw = {
        "header": get(b"/api/x", b"Authorization: Bearer " + token),
        "query": get(b"/api/x?access_token=" + token),
        "form": _form(b"/api/x", b"access_token=" + token),
    }[where]
    res = await send_raw(gw.port, raw)
    assert res.first.status == 401
    assert res.first.json()["error"] == "invalid_token"
    assert b"UnknownTokenValue" not in res.raw
    assert recorder.seen == []


# =========================================================================== 5. appsecret_proof
def _proof_request(
    token: str, proof: str | None, when: int | str | None, how: str = "header"
) -> bytes:
    headers = [f"Authorization: Bearer {token}"]
    target = "/proof/x"
    if how == "header":
        if proof is not None:
            headers.append(f"X-Appsecret-Proof: {proof}")
        if when is not None:
            headers.append(f"X-Appsecret-Time: {when}")
    else:
        params = []
        if proof is not None:
            params.append(f"appsecret_proof={proof}")
        if when is not None:
            params.append(f"appsecret_time={when}")
        target += "?" + "&".join(params)
    return get(target, *headers)


@pytest.mark.parametrize("how", ["header", "query"])
@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("fresh", 200, None),
        ("fresh-old-secret", 200, None),
        ("no-time", 200, None),
        ("upper-hex", 200, None),
        ("past", 403, "invalid_appsecret_proof"),
        ("future", 403, "invalid_appsecret_proof"),
        ("far-future-12-digits", 403, "invalid_appsecret_proof"),
        ("other-token", 403, "invalid_appsecret_proof"),
        ("time-tampered", 403, "invalid_appsecret_proof"),
        ("time-stripped", 403, "invalid_appsecret_proof"),
        ("time-added", 403, "invalid_appsecret_proof"),
        ("wrong-secret", 403, "invalid_appsecret_proof"),
        ("truncated", 403, "invalid_appsecret_proof"),
        ("not-hex", 403, "invalid_appsecret_proof"),
        ("time-float", 400, "invalid_request"),
        ("time-plus", 400, "invalid_request"),
        ("time-13-digits", 400, "invalid_request"),
        ("missing", 400, "invalid_request"),
    ],
)
async def test_appsecret_proof_replay(recorder, make_gateway, how, case, status, error):
    """Stale, future, foreign, tampered or malformed proofs are refused; fresh ones pass."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    other = await issue(gw, subject="bob")
    now = int(time.time())
    proof: str | None = compute_proof(token, APP_SECRET, now - 5)
    when: int | str | None = now - 5
    if case == "fresh-old-secret":
        proof = compute_proof(token, OLD_SECRET, now - 5)
    elif case == "no-time":
        proof, when = compute_proof(token, APP_SECRET), None
    elif case == "upper-hex":
        proof = compute_proof(token, APP_SECRET, now).upper()
        when = now
    elif case == "past":
        proof, when = compute_proof(token, APP_SECRET, now - 3600), now - 3600
    elif case == "future":
        proof, when = compute_proof(token, APP_SECRET, now + 3600), now + 3600
    elif case == "far-future-12-digits":
        proof, when = compute_proof(token, APP_SECRET, 999_999_999_999), 999_999_999_999
    elif case == "other-token":
        proof = compute_proof(other, APP_SECRET, now - 5)
    elif case == "time-tampered":
        when = now - 4
    elif case == "time-stripped":
        when = None
    elif case == "time-added":
        proof = compute_proof(token, APP_SECRET)
    elif case == "wrong-secret":
        proof = compute_proof(token, "guess", now - 5)
    elif case == "truncated":
        proof = (proof or "")[:32]
    elif case == "not-hex":
        proof = "zz" + (proof or "")[2:]
    elif case == "time-float":
        when = f"{now}.0"
    elif case == "time-plus":
        when = f"+{now}"
    elif case == "time-13-digits":
        when = "1" + "0" * 12
    elif case == "missing":
        proof = None
    res = await send_raw(gw.port, _proof_request(token, proof, when, how))
    assert res.first.status == status, res.first.body
    if error is None:
        assert len(recorder.seen) == 1
        names = {n for n, _ in recorder.seen[0]["headers"]}
        assert not names & {"x-appsecret-proof", "x-appsecret-time", "authorization"}
        assert "appsecret" not in recorder.seen[0]["query"]
    else:
        assert res.first.json()["error"] == error
        assert recorder.seen == []
        assert token.encode() not in res.raw


@pytest.mark.parametrize(
    ("query_proof", "header_proof", "status"),
    [("good", "bad", 400), ("bad", "good", 400), ("good", "good", 200), ("good", "GOOD", 400)],
    ids=["query-good-header-bad", "query-bad-header-good", "same-both", "case-differs"],
)
async def test_proof_in_query_and_header(recorder, make_gateway, query_proof, header_proof, status):
    """A proof sent in query and header with different values is 400 invalid_request."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    good = compute_proof(token, APP_SECRET)
    values = {"good": good, "bad": "0" * 64, "GOOD": good.upper()}
    raw = get(
        f"/proof/x?appsecret_proof={values[query_proof]}",
        f"Authorization: Bearer {token}",
        f"X-Appsecret-Proof: {values[header_proof]}",
    )
    res = await send_raw(gw.port, raw)
    assert res.first.status == status
    assert len(recorder.seen) == (1 if status == 200 else 0)
    if status == 400:
        assert res.first.json()["error"] == "invalid_request"


async def test_proof_time_in_query_and_header_conflict(recorder, make_gateway):
    """Two different appsecret_time values (query and header) are 400, not a choice of one."""
    gw = await make_gateway(attack_config(recorder.url))
    token = await issue(gw)
    now = int(time.time())
    raw = get(
        f"/proof/x?appsecret_time={now - 3600}",
        f"Authorization: Bearer {token}",
        f"X-Appsecret-Proof: {compute_proof(token, APP_SECRET, now)}",
        f"X-Appsecret-Time: {now}",
    )
    res = await send_raw(gw.port, raw)
    assert res.first.status == 400
    assert recorder.seen == []


# =========================================================================== 6. tokens in logs
async def _noisy_series(gw: Any, recorder: Recorder) -> list[str]:
    """Requests with tokens and proofs everywhere; returns every secret value that was sent."""
    good = await issue(gw)
    revoked = await issue(gw, subject="carol")
    proof = compute_proof(good, APP_SECRET)
    unknown = "NeverIssuedTokenValue0123456789"
    malformed = "Bad Token\u00e9Value"
    now = int(time.time())
    stale_proof = compute_proof(good, APP_SECRET, now - 9999)
    requests = [
        get("/api/x", f"Authorization: Bearer {good}"),
        get(f"/api/x?access_token={good}&keep=1"),
        _form(b"/api/x", b"access_token=" + good.encode() + b"&a=1"),
        get("/api/x", f"Authorization: Bearer {unknown}"),
        get(f"/api/x?access_token={unknown}"),
        _form(b"/api/x", b"access_token=" + unknown.encode()),
        get("/api/x", b"Authorization: Bearer " + malformed.encode("utf-8")),
        get(f"/api/x?access_token={good}", f"Authorization: Bearer {good}"),
        get(f"/proof/x?appsecret_proof={proof}", f"Authorization: Bearer {good}"),
        get("/proof/x", f"Authorization: Bearer {good}", f"X-Appsecret-Proof: {proof}"),
        get(
            f"/proof/x?appsecret_proof={stale_proof}&appsecret_time={now - 9999}",
            f"Authorization: Bearer {good}",
        ),
        get(f"/proof/x?appsecret_proof={'ab' * 32}", f"Authorization: Bearer {good}"),
        get("/oauth20/access-token", f"Authorization: Bearer {good}"),
        get(f"/oauth20/access-token?access_token={revoked}"),
        b"DELETE /oauth20/access-token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: Bearer {revoked}\r\n\r\n".encode(),
        get("/api/x", f"Authorization: Bearer {revoked}"),
        get(f"/api/x?access_token={revoked}"),
        get(f"/public/x?access_token={good}&appsecret_proof={proof}"),
        get("/public/x", f"Authorization: Bearer {good}", f"X-Appsecret-Proof: {proof}"),
        get(f"/nowhere?access_token={good}"),
        get(f"/public/%2f?access_token={good}"),
    ]
    statuses = []
    for raw in requests:
        res = await send_raw(gw.port, raw)
        statuses.append(res.first.status)
    assert statuses[:3] == [200, 200, 200]
    assert statuses[14:17] == [200, 401, 401]  # revoked, then refused
    gw.gateway.runtime.access.flush()
    return [good, revoked, unknown, malformed, proof, stale_proof, "ab" * 32]


async def test_tokens_and_proofs_never_in_stdout_or_stderr(recorder, make_gateway, capfd):
    """No token or proof value appears in the access log or any other log output."""
    gw = await make_gateway(attack_config(recorder.url))
    capfd.readouterr()
    secrets = await _noisy_series(gw, recorder)
    out, err = capfd.readouterr()
    assert '"event":"access"' in out.replace(" ", "")
    for secret in secrets:
        assert secret not in out and secret not in err, secret
        assert secret[:20] not in out + err


async def test_tokens_and_proofs_never_in_structlog_events(recorder, make_gateway):
    """No structlog event, at debug level, carries a token or proof value."""
    cfg = attack_config(recorder.url, log={"format": "json", "access": True, "level": "debug"})
    gw = await make_gateway(cfg)
    with capture_logs() as events:
        secrets = await _noisy_series(gw, recorder)
    dumped = repr(events)
    for secret in secrets:
        assert secret not in dumped, secret


async def test_console_access_log_is_written_without_task_errors(recorder, make_gateway):
    """With console logs, every request yields one structlog access event and no task error."""
    gw = await make_gateway(attack_config(recorder.url, log={"format": "console", "access": True}))
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        with capture_logs() as events:
            res = await send_raw(gw.port, get(b"/public/x?access_token=SecretInQuery123"))
            await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert res.first.status == 200
    errors_text = [str(c.get("exception") or c.get("message")) for c in errors]
    assert errors_text == []
    rid = res.first.header("x-request-id")
    lines = [e for e in events if e.get("request_id") == rid]
    assert len(lines) == 1
    assert "SecretInQuery123" not in repr(lines)
