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
from gateway.http.fastscan import join_fields
from gateway.http.scan import KNOWN_NAMES

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
    {b"x-auth-subject", b"x-auth-client-id", b"x-auth-scope", b"x-auth-grant", b"x-auth-binding"}
)
CREDENTIAL_HEADERS: Final = frozenset(
    {b"authorization", b"x-appsecret-proof", b"x-appsecret-time", b"dpop"}
)

#: the common header names (gateway/http/scan.py) as a static of this compiled module
_LOWER_NAMES: Final[dict[bytes, bytes]] = KNOWN_NAMES


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


class Challenge:
    """How a route's refusals are challenged beyond RFC 6750's plain Bearer, built once per
    route: the route's `resource_metadata` (RFC 9728 5.1) and scope on every challenge, and
    which schemes are offered (RFC 9449 7.1: `DPoP` with the accepted `algs`)."""

    __slots__ = ("bearer", "dpop", "errors_in_dpop", "params", "scope")

    def __init__(
        self, bearer: bool, dpop: str | None, errors_in_dpop: bool, params: str, scope: str
    ) -> None:
        self.bearer = bearer  # a `Bearer` challenge is offered
        self.dpop = dpop  # the `algs="..."` of a `DPoP` challenge, or None: none offered
        self.errors_in_dpop = errors_in_dpop  # the error attributes go to the DPoP challenge
        self.params = params  # `, resource_metadata="..."` or ""
        self.scope = scope  # the route's scopes for 401 challenges ("" for none)

    def with_dpop_errors(self, algs: str) -> Challenge:
        """This challenge for a request that used the DPoP scheme: the error is the DPoP
        challenge's (offered even where the route would not offer it)."""
        return Challenge(self.bearer, self.dpop or algs, True, self.params, self.scope)


def dpop_challenge(algs: str, params: str = "", scope: str = "") -> Challenge:
    """The challenge of a request that used the DPoP scheme on a route offering Bearer."""
    return Challenge(False, algs, True, params, scope)


def _error_attrs(exc: GatewayError, route_scope: str) -> str:
    if exc.error_code == "missing_token":
        return f', scope="{_quote(route_scope)}"' if route_scope else ""
    attrs = f'error="{exc.error_code}", error_description="{_quote(exc.description)}"'
    if isinstance(exc, InsufficientScopeError):
        attrs += f', scope="{_quote(exc.scope)}"'
    elif route_scope:
        attrs += f', scope="{_quote(route_scope)}"'
    return ", " + attrs


def challenges(exc: GatewayError, realm: str, ch: Challenge) -> list[bytes]:
    """The `WWW-Authenticate` values of a route with a Challenge: Bearer first (MCP clients
    read only a leading Bearer challenge), then DPoP; the error attributes in the challenge of
    the scheme the client used (a DPoP error always in the DPoP one)."""
    in_dpop = ch.errors_in_dpop or exc.dpop
    attrs = _error_attrs(exc, ch.scope)
    quoted_realm = _quote(realm)
    out: list[bytes] = []
    if ch.bearer and not (exc.dpop and ch.dpop is None):
        bearer_attrs = "" if in_dpop and ch.dpop is not None else attrs
        out.append(f'Bearer realm="{quoted_realm}"{bearer_attrs}{ch.params}'.encode())
    if ch.dpop is not None:
        dpop_attrs = attrs if in_dpop else ""
        out.append(f'DPoP realm="{quoted_realm}"{dpop_attrs}, {ch.dpop}{ch.params}'.encode())
    return out


def error_body(exc: GatewayError) -> bytes:
    body: dict[str, str] = {"error": exc.error_code, "error_description": exc.description}
    if isinstance(exc, InsufficientScopeError):
        body["scope"] = exc.scope
    return orjson.dumps(body)


def error_headers(
    exc: GatewayError, realm: str, ch: Challenge | None = None
) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if exc.challenge:
        if ch is None:
            headers.append((b"www-authenticate", www_authenticate(exc, realm)))
        else:
            for value in challenges(exc, realm, ch):
                headers.append((b"www-authenticate", value))
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
    return join_fields(status_line(status, version), headers, tail)
