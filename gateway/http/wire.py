"""HTTP/1.1 wire constants and the rendering of error answers (SPEC section 4) as bytes."""

from __future__ import annotations

import os
import re
from http import HTTPStatus
from typing import Final

import orjson

from gateway.errors import (
    GatewayError,
    InsufficientScopeError,
    MethodNotAllowedError,
    RateLimitedError,
)

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
IDENTITY_HEADERS: Final = frozenset(
    {b"x-auth-subject", b"x-auth-client-id", b"x-auth-scope", b"x-auth-grant"}
)
CREDENTIAL_HEADERS: Final = frozenset({b"authorization", b"x-appsecret-proof", b"x-appsecret-time"})

_COMMON_NAMES = (
    b"Accept", b"Accept-Encoding", b"Accept-Language", b"Accept-Ranges",
    b"Access-Control-Allow-Origin", b"Age", b"Authorization", b"Cache-Control", b"Connection",
    b"Content-Encoding", b"Content-Language", b"Content-Length", b"Content-Type", b"Cookie",
    b"Date", b"ETag", b"Expect", b"Expires", b"Host", b"If-Modified-Since", b"If-None-Match",
    b"Keep-Alive", b"Last-Modified", b"Location", b"Origin", b"Pragma", b"Proxy-Connection",
    b"Referer", b"Server", b"Set-Cookie", b"Transfer-Encoding", b"Upgrade", b"User-Agent",
    b"Vary", b"Via", b"X-Forwarded-For", b"X-Forwarded-Host", b"X-Forwarded-Proto",
    b"X-Request-Id", b"X-Appsecret-Proof", b"X-Appsecret-Time",
)  # fmt: skip
#: Common header names as clients and servers spell them -> one shared lower-case object
#: (a dict lookup instead of a lower() call and a new object per header; the shared object's
#: hash is computed once, which every later set/dict lookup of the name reuses)
_LOWER_NAMES: Final[dict[bytes, bytes]] = {
    spelling: lower
    for name in _COMMON_NAMES
    for lower in (name.lower(),)
    for spelling in (name, lower, name.upper())
}


def lower_name(name: bytes) -> bytes:
    """A header name in lower case."""
    common = _LOWER_NAMES.get(name)
    return common if common is not None else name.lower()


_KEEP_ALIVE: Final = frozenset({b"keep-alive"})
_CLOSE: Final = frozenset({b"close"})
#: Connection values as clients and upstreams usually spell them: no split/strip/lower needed
_SIMPLE_CONNECTION: Final[dict[bytes, frozenset[bytes]]] = {
    b"keep-alive": _KEEP_ALIVE,
    b"Keep-Alive": _KEEP_ALIVE,
    b"close": _CLOSE,
    b"Close": _CLOSE,
}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-case tokens of a Connection header value (RFC 9110 7.6.1)."""
    simple = _SIMPLE_CONNECTION.get(value)
    if simple is not None:
        return simple
    return frozenset(t for t in (p.strip().lower() for p in value.split(b",")) if t)


_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class _RequestIds:
    """Minted request ids: a random per-process prefix and a counter (no syscall per id).

    A forked worker (`workers: N`) draws its own prefix, or every worker would mint the same
    ids. The counter is decimal from 10**12: 13 digits for 9 trillion ids, one length."""

    def __init__(self) -> None:
        self.prefix = ""
        self.counter = 0
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.counter = 10**12

    def mint(self) -> str:
        n = self.counter
        self.counter = n + 1
        return f"{self.prefix}{n}"


_IDS: Final = _RequestIds()
os.register_at_fork(after_in_child=_IDS.reseed)


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def request_id(sent: bytes | None) -> str:
    """Keep a well-formed client id (1-128 of `A-Za-z0-9._:-`); else mint one, with no syscall."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii")
    return _IDS.mint()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def www_authenticate(exc: GatewayError, realm: str) -> bytes:
    """RFC 6750 section 3 challenge; no error attributes when the request had no credentials."""
    parts = [f'Bearer realm="{_quote(realm)}"']
    if exc.error_code != "missing_token":
        parts.append(f'error="{exc.error_code}"')
        parts.append(f'error_description="{_quote(exc.description)}"')
        if isinstance(exc, InsufficientScopeError):
            parts.append(f'scope="{_quote(exc.scope)}"')
    return ", ".join(parts).encode("ascii", "replace")


def error_body(exc: GatewayError) -> bytes:
    body: dict[str, str] = {"error": exc.error_code, "error_description": exc.description}
    if isinstance(exc, InsufficientScopeError):
        body["scope"] = exc.scope
    return orjson.dumps(body)


def error_headers(exc: GatewayError, realm: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if exc.challenge:
        headers.append((b"www-authenticate", www_authenticate(exc, realm)))
    if isinstance(exc, MethodNotAllowedError):
        headers.append((b"allow", exc.allow.encode()))
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(exc.retry_after).encode()))
    if isinstance(exc, RateLimitedError):
        headers += exc.headers
    return headers


_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _REASONS.items()
}


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`: looked up for HTTP/1.1 and the known codes."""
    if version == b"1.1":
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
    return b"HTTP/%s %d %s\r\n" % (version, status, reason_phrase(status))


def render_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    version: bytes = b"1.1",
    tail: bytes = b"\r\n",
) -> bytes:
    """Status line and header block; `tail` ends it (more header lines, then CRLF)."""
    out = [status_line(status, version)]
    for name, value in headers:
        out += (name, b": ", value, b"\r\n")
    out.append(tail)
    return b"".join(out)
