"""HTTP/1.1 wire constants and the rendering of error answers (SPEC section 4) as bytes."""

from __future__ import annotations

import itertools
import os
import re
from http import HTTPStatus
from typing import Final

import orjson

from gateway.errors import GatewayError, InsufficientScopeError, MethodNotAllowedError

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

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_ID_PREFIX: Final = os.urandom(6).hex()
_ID_COUNTER: Final = itertools.count(1 << 40)  # 11 hex digits for 16 trillion ids: one length


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def request_id(sent: bytes | None) -> str:
    """Keep a well-formed client id (1-128 of `A-Za-z0-9._:-`); else mint one, with no syscall."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii")
    return _ID_PREFIX + hex(next(_ID_COUNTER))[2:]  # hex(): no format-spec parsing per request


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
    return headers


def render_head(status: int, headers: list[tuple[bytes, bytes]], version: bytes = b"1.1") -> bytes:
    """Status line and header block, CRLF-terminated."""
    out = [b"HTTP/", version, b" ", str(status).encode(), b" ", reason_phrase(status), b"\r\n"]
    for name, value in headers:
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
