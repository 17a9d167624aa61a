"""The forward stage: the upstream request head (SPEC section 7) and the relay of the answer."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

from gateway.authn.info import TokenInfo
from gateway.config.models import GatewayConfig
from gateway.errors import GatewayError, UpstreamError
from gateway.extract import strip_credentials_query
from gateway.http import wire
from gateway.http.exchange import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, Exchange
from gateway.http.pool import UpstreamPool
from gateway.http.upstream import UpstreamConnection, UpstreamResetError
from gateway.pipeline import spawn
from gateway.routing import Route

_UNSAFE_VALUE: Final = re.compile(rb"[^\x20-\x7e]")
_IDEMPOTENT: Final = frozenset(
    {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
)  # RFC 9110 9.2.2
_SKIP_ALWAYS: Final = frozenset({b"x-request-id", b"content-length", b"expect", b"host"})


def header_value(value: str) -> bytes:
    """A value safe in a header: anything outside visible ASCII is percent-encoded."""
    raw = value.encode("utf-8")
    if _UNSAFE_VALUE.search(raw) is None:
        return raw
    return _UNSAFE_VALUE.sub(lambda m: b"%%%02X" % m.group()[0], raw)


_IDENTITY_CACHE: Final[dict[int, tuple[TokenInfo, bytes]]] = {}
_IDENTITY_CACHE_MAX: Final = 50_000


def identity_headers(info: TokenInfo) -> list[tuple[bytes, bytes]]:
    """The X-Auth-* headers of a token (SPEC section 7), values made header-safe."""
    return [
        (b"x-auth-subject", header_value(info.subject or "")),
        (b"x-auth-client-id", header_value(info.client_id or "")),
        (b"x-auth-scope", header_value(info.scope)),
        (b"x-auth-grant", header_value(info.grant)),
    ]


def identity_block(info: TokenInfo) -> bytes:
    """identity_headers() as header lines, rendered once per TokenInfo (it never changes)."""
    hit = _IDENTITY_CACHE.get(id(info))
    if hit is not None and hit[0] is info:  # the entry holds info, so its id is not reused
        return hit[1]
    block = b"".join(n + b": " + v + b"\r\n" for n, v in identity_headers(info))
    if len(_IDENTITY_CACHE) >= _IDENTITY_CACHE_MAX:
        _IDENTITY_CACHE.clear()
    _IDENTITY_CACHE[id(info)] = (info, block)
    return block


class TrustedProxies:
    """Peers whose X-Forwarded-* are kept and appended to."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(c) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                hit = any(addr in n for n in self.networks)
            except ValueError:
                hit = False
            if len(self._cache) < 10_000:
                self._cache[ip] = hit
        return hit


def _spellings(name: bytes) -> list[bytes]:
    """`name` with each of its `-` also written `_`, in every combination (x_auth-subject...):
    upstream frameworks often read `_` as `-`, so X_Auth_Subject must not slip past."""
    out = [b""]
    for part_index, part in enumerate(name.split(b"-")):
        if part_index == 0:
            out = [part]
        else:
            out = [prefix + sep + part for prefix in out for sep in (b"-", b"_")]
    return out


# What to do with each client header that is not simply copied: lower-case names, in every
# `-`/`_` spelling (one dict lookup per header, no search for `_`)
_HOP, _IDENTITY, _CREDENTIAL, _OURS, _XFF, _XF_KEEP = range(6)
_ACTIONS: Final[dict[bytes, int]] = {
    **dict.fromkeys(wire.HOP_BY_HOP, _HOP),
    **dict.fromkeys(wire.IDENTITY_HEADERS, _IDENTITY),
    **dict.fromkeys(wire.CREDENTIAL_HEADERS, _CREDENTIAL),
    **dict.fromkeys(_SKIP_ALWAYS, _OURS),
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XF_KEEP,
    b"x-forwarded-host": _XF_KEEP,
}
_SPECIAL: Final[dict[bytes, int]] = {
    spelling: action for name, action in _ACTIONS.items() for spelling in _spellings(name)
}


def build_head(
    ex: Exchange,
    route: Route,
    info: TokenInfo | None,
    target_path: str,
    trusted: bool,
) -> tuple[bytes, bool]:
    """The upstream request head, and whether its body is sent chunked."""
    conn_tokens = ex.conn_tokens
    forward_token = route.forward_token
    xff = b""
    kept_proto = kept_host = False
    out: list[bytes] = [b""]  # [0]: the request line and our headers, rendered last
    for name, value in ex.headers:
        action = _SPECIAL.get(name)
        if action is None:
            if not conn_tokens or name not in conn_tokens:
                out += (name, b": ", value, b"\r\n")
        elif action == _HOP:
            if ex.upgrade and name in (b"connection", b"upgrade"):
                out += (name, b": ", value, b"\r\n")
        elif action == _CREDENTIAL:
            if forward_token and name not in conn_tokens:
                out += (name, b": ", value, b"\r\n")
        elif trusted and action == _XFF:
            xff = value if not xff else xff + b", " + value
        elif trusted and action == _XF_KEEP:
            if name.endswith(b"proto"):
                kept_proto = True
            else:
                kept_host = True
            out += (name, b": ", value, b"\r\n")
    host = ex.host or ""
    ip = ex.client_ip
    forwarded_for = xff.decode("latin-1") + ", " + ip if xff else ip
    proto = "" if kept_proto else "x-forwarded-proto: http\r\n"
    fhost = "" if kept_host else f"x-forwarded-host: {host}\r\n"
    query = ex.query if forward_token else strip_credentials_query(ex.query)
    target = target_path + "?" + query if query else target_path
    # The request line and the headers the gateway writes, as one str: compiled, an f-string
    # of str pieces is one allocation, and one encode (all latin-1: they came off the wire)
    out[0] = (
        f"{ex.method} {target} HTTP/1.1\r\nhost: {host}\r\nx-forwarded-for: {forwarded_for}"
        f"\r\nx-request-id: {ex.request_id}\r\n{proto}{fhost}"
    ).encode("latin-1")
    chunked = ex.body_mode == BODY_CHUNKED
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    elif ex.body_mode == BODY_LENGTH:
        out += (b"content-length: ", str(ex.content_length).encode(), b"\r\n")
    if info is not None:
        out.append(identity_block(info))
    out.append(b"\r\n")
    return b"".join(out), chunked


class Forwarder:
    """Sends allowed requests to their route's upstream pool."""

    def __init__(self, cfg: GatewayConfig, pools: dict[str, UpstreamPool]) -> None:
        self.pools = pools
        self.trusted = TrustedProxies(cfg.trusted_proxies)

    def forward(self, ex: Exchange, route: Route, info: TokenInfo | None) -> None:
        """Relay the exchange: at once on an idle pooled connection, else after connecting."""
        pool = self.pools[route.upstream]
        ex.send_continue()
        conn = None if ex.upgrade else pool.take_idle()
        # a kept-alive connection may be closed under us; retrying is safe only without a body
        # and for idempotent methods (the upstream may have acted before the reset)
        retry = ex.body_mode == BODY_NONE and not ex.upgrade and ex.method in _IDEMPOTENT
        if conn is None:
            spawn(ex, self._connect_and_send(ex, route, info, pool, ex.upgrade, retry))
        else:
            self._send(conn, ex, route, info, retry)

    async def _connect_and_send(
        self,
        ex: Exchange,
        route: Route,
        info: TokenInfo | None,
        pool: UpstreamPool,
        fresh: bool,
        retry: bool,
    ) -> None:
        conn = await pool.acquire(fresh=fresh)
        if not ex.ended:
            self._send(conn, ex, route, info, retry)
        else:
            pool.release(conn, reusable=True)

    def _send(
        self,
        conn: UpstreamConnection,
        ex: Exchange,
        route: Route,
        info: TokenInfo | None,
        retry: bool,
    ) -> None:
        trusted = bool(self.trusted.networks) and ex.client_ip in self.trusted
        path = conn.target.base_path + route.upstream_path(ex.raw_path)
        head, chunked = build_head(ex, route, info, path, trusted)
        reused = conn.reused

        def on_error(exc: GatewayError) -> None:
            if isinstance(exc, UpstreamResetError):
                if retry and reused:  # a kept-alive connection closed under us: once, fresh
                    spawn(ex, self._connect_and_send(ex, route, info, conn.pool, True, False))
                    return
                exc = UpstreamError("upstream_reset")
            ex.fail(exc)

        conn.send(ex, head, chunked, conn.pool.cfg.timeout, on_error)
        ex.on_gone = conn.abort
        ex.attach_sink(conn)
        conn.flush()
