"""What the upstream receives (SPEC section 7, docs/upstream.md): one explicit action per
client header, the X-Forwarded-* headers, the identity headers. Builds an `OutgoingRequest`;
how it is written on the wire is the HTTP layer's business (gateway/http/outgoing.py)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from typing import Final

from cryptography import x509

from gateway.authn.info import TokenInfo
from gateway.extract import strip_credentials_query
from gateway.http import wire
from gateway.http.exchange import ClientConnection, Exchange
from gateway.http.outgoing import OutgoingRequest
from gateway.routing import Route
from gateway.tracecontext import TRACEPARENT, TRACESTATE, incoming

_UNSAFE_VALUE: Final = re.compile(rb"[^\x20-\x7e]")


def header_value(value: str) -> bytes:
    """A value safe in a header: anything outside visible ASCII is percent-encoded."""
    raw = value.encode("utf-8")
    if _UNSAFE_VALUE.search(raw) is None:
        return raw
    return _UNSAFE_VALUE.sub(lambda m: b"%%%02X" % m.group()[0], raw)


def identity_headers(info: TokenInfo) -> list[tuple[bytes, bytes]]:
    """The X-Auth-* headers of a token (SPEC section 7), values made header-safe; with
    `X-Auth-Binding: dpop|mtls` for a sender-constrained token (SPEC section 13)."""
    headers = [
        (b"x-auth-subject", header_value(info.subject or "")),
        (b"x-auth-client-id", header_value(info.client_id or "")),
        (b"x-auth-scope", header_value(info.scope)),
        (b"x-auth-grant", header_value(info.grant)),
    ]
    binding = info.binding
    if binding is not None:
        headers.append((b"x-auth-binding", binding.encode("ascii")))
    return headers


_IDENTITY_CACHE: Final[dict[int, tuple[TokenInfo, bytes]]] = {}
_IDENTITY_CACHE_MAX: Final = 50_000


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


def client_cert_element(der: bytes) -> bytes:
    """The `X-Forwarded-Client-Cert` element of a verified client certificate, as Envoy writes
    it: `Hash=<hex SHA-256 of the DER>;Subject="<RFC 4514 subject>"`. In the subject, a
    character outside visible ASCII becomes RFC 4514 `\\XX` escapes of its UTF-8 bytes (as
    OpenSSL's RFC 2253 printing does), then `"` and `\\` are escaped with a backslash. A
    certificate OpenSSL verified but `cryptography` cannot parse gets an empty subject."""
    try:
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        subject = ""
    raw = subject.encode("utf-8")
    if _UNSAFE_VALUE.search(raw) is not None:
        raw = _UNSAFE_VALUE.sub(lambda m: b"\\%02X" % m.group()[0], raw)
    quoted = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b"Hash=" + hashlib.sha256(der).hexdigest().encode() + b';Subject="' + quoted + b'"'


def _client_cert_line(conn: ClientConnection, cert: bytes | None, forwarded: bytes) -> bytes:
    """The `X-Forwarded-Client-Cert` line: what a trusted proxy sent (`forwarded`), then the
    element of this connection's certificate after a comma (rendered once per connection)."""
    own = conn.forwarded_cert
    if own is None and cert is not None:
        own = client_cert_element(cert)
        conn.forwarded_cert = own
    if own is None:
        value = forwarded
    elif forwarded:
        value = forwarded + b"," + own
    else:
        value = own
    return b"x-forwarded-client-cert: " + value + b"\r\n"


class TrustedProxies:
    """Peers whose X-Forwarded-* are kept and appended to."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(c) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        if not self.networks:
            return False
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


# One action for each client header that is not simply copied.
DROP: Final = 0  # identity headers and those the gateway writes itself: never from the client
HOP: Final = 1  # hop-by-hop: dropped, except Connection / Upgrade of a relayed upgrade
CREDENTIAL: Final = 2  # Authorization, appsecret proofs: only with forward_token
APPEND_XFF: Final = 3  # X-Forwarded-For: appended to when the peer is trusted, else replaced
KEEP_IF_TRUSTED: Final = 4  # X-Forwarded-Proto / -Host: kept from trusted peers, else replaced
#: X-Forwarded-Client-Cert: kept from trusted peers (the verified certificate's element appended
#: after a comma), else removed; its `_` spellings are removed from everyone
CLIENT_CERT: Final = 5
_CLIENT_CERT_NAME: Final = b"x-forwarded-client-cert"
TRACE_CONTEXT: Final = 6  # traceparent / tracestate: the request's trace context replaces them
#: a header only trusted proxies may set (a custom `tokens.mtls.cert_header`): kept from them,
#: removed from everyone else, its `_` spellings from everyone
TRUSTED_ONLY: Final = 7

_OURS: Final = frozenset({b"x-request-id", b"content-length", b"expect", b"host"})
ACTIONS: Final[dict[bytes, int]] = {
    **dict.fromkeys(wire.HOP_BY_HOP, HOP),
    **dict.fromkeys(wire.IDENTITY_HEADERS, DROP),
    **dict.fromkeys(wire.CREDENTIAL_HEADERS, CREDENTIAL),
    **dict.fromkeys(_OURS, DROP),
    b"x-forwarded-for": APPEND_XFF,
    b"x-forwarded-proto": KEEP_IF_TRUSTED,
    b"x-forwarded-host": KEEP_IF_TRUSTED,
    _CLIENT_CERT_NAME: CLIENT_CERT,
    TRACEPARENT: TRACE_CONTEXT,
    TRACESTATE: TRACE_CONTEXT,
}


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


#: what a trusted proxy may pass on: it sets these under their `-` names, and passes a client's
#: `X_Forwarded_For`, `X_Forwarded_Proto`... on untouched, so their `_` spellings are dropped
#: from everyone (an upstream reading `_` as `-` would otherwise take the client's value)
_FROM_PROXIES: Final = frozenset({APPEND_XFF, KEEP_IF_TRUSTED, CLIENT_CERT})

#: ACTIONS under every `-`/`_` spelling of each name: one dict lookup per header
SPECIAL: Final[dict[bytes, int]] = {
    spelling: DROP if action in _FROM_PROXIES and spelling != name else action
    for name, action in ACTIONS.items()
    for spelling in _spellings(name)
}


def header_actions(cert_header: str) -> dict[bytes, int]:
    """SPECIAL, plus a custom `tokens.mtls.cert_header` that only trusted proxies may set (the
    default, X-Forwarded-Client-Cert, has its own action already)."""
    name = cert_header.strip().lower().encode("latin-1")
    if name in SPECIAL:
        return SPECIAL
    extra = {spelling: DROP for spelling in _spellings(name) if spelling != name}
    return {**SPECIAL, **extra, name: TRUSTED_ONLY}


def upstream_request(
    ex: Exchange,
    route: Route,
    info: TokenInfo | None,
    trusted: bool,
    scheme: str,
    special: dict[bytes, int] = SPECIAL,
) -> OutgoingRequest:
    """The request the route's upstream receives for this exchange (`special`: the header
    actions, `header_actions()` of the config)."""
    head = ex.head
    conn_tokens = head.conn_tokens
    forward_token = route.forward_token
    xff = xfcc = b""
    kept_proto = kept_host = False
    kept: list[tuple[bytes, bytes]] = []
    parents = 0  # traceparent fields received (two or more are invalid)
    parent = b""
    states: list[bytes] | None = None
    for header in head.headers:
        name = header[0]
        action = special.get(name)
        if action is None:  # an ordinary header: copied unless Connection names it
            if not conn_tokens or name not in conn_tokens:
                kept.append(header)
        elif action == DROP:
            continue
        elif action == HOP:
            if head.upgrade and name in (b"connection", b"upgrade"):
                kept.append(header)
        elif action == CREDENTIAL:
            if forward_token and name not in conn_tokens:
                kept.append(header)
        elif action == APPEND_XFF:
            if trusted:
                xff = header[1] if not xff else xff + b", " + header[1]
        elif action == CLIENT_CERT:
            if trusted and header[1] and name not in conn_tokens:
                xfcc = header[1] if not xfcc else xfcc + b"," + header[1]
        elif action == TRACE_CONTEXT:
            if name == TRACEPARENT:
                parents += 1
                parent = header[1]
            else:
                states = [header[1]] if states is None else [*states, header[1]]
        elif action == TRUSTED_ONLY:
            if trusted and name not in conn_tokens:
                kept.append(header)
        elif trusted:  # KEEP_IF_TRUSTED
            if name.endswith(b"proto"):
                kept_proto = True
            else:
                kept_host = True
            kept.append(header)
    trace = ex.trace
    if trace is None and parents:
        # no `tracing:` (it gives every request a context first): a valid context is passed on
        # as it came, an invalid one is dropped; its trace-id goes to the access log
        trace = ex.trace = incoming(parent, parents, states)
    host = head.host or ""
    ip = ex.client_ip
    added = identity_block(info) if info is not None else b""
    cert = ex.conn.peer_certificate
    if cert is not None or xfcc:
        added += _client_cert_line(ex.conn, cert, xfcc)
    return OutgoingRequest(
        head.method,
        route.upstream_path(head.path),
        head.query if forward_token else strip_credentials_query(head.query),
        host,
        kept,
        xff.decode("latin-1") + ", " + ip if xff else ip,
        None if kept_proto else scheme,
        None if kept_host or not host else host,
        head.request_id,
        ex.body_mode,
        ex.content_length,
        added,
        trace.lines if trace is not None else ex.trace_line,
    )
