"""Interpreting a request head: one pass over the headers collects what the server needs
(target forms, keep-alive, framing) and the smuggling checks llhttp leaves to us (CL with TE,
duplicate CL, TE other than exactly `chunked`, missing or repeated Host)."""

from __future__ import annotations

from typing import Final

from gateway.errors import BadHttpRequestError, GatewayError
from gateway.http import wire

_WATCHED: Final = frozenset(
    {
        b"host",
        b"transfer-encoding",
        b"content-length",
        b"expect",
        b"upgrade",
        b"x-request-id",
        b"connection",
        b"proxy-connection",
    }
)
_EMPTY: Final[frozenset[bytes]] = frozenset()


class HeadScan:
    """The headers the server itself acts on, gathered in one pass."""

    __slots__ = (
        "cl",
        "conn_headers",
        "connection",
        "expect",
        "hosts",
        "request_id",
        "te",
        "upgrade",
    )

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.hosts: list[bytes] = []
        self.te: list[bytes] = []
        self.cl: list[bytes] = []
        self.expect: bytes | None = None
        self.upgrade: bytes | None = None
        self.request_id: bytes | None = None
        #: a Connection or Proxy-Connection header was sent (both set llhttp's keep-alive flags)
        self.conn_headers = False
        tokens: frozenset[bytes] | None = None
        for name, value in headers:
            if name not in _WATCHED:
                continue
            if name == b"host":
                self.hosts.append(value)
            elif name == b"transfer-encoding":
                self.te.append(value)
            elif name == b"content-length":
                self.cl.append(value)
            elif name == b"connection":
                self.conn_headers = True
                more = wire.connection_tokens(value)
                tokens = more if tokens is None else tokens | more
            elif name == b"proxy-connection":
                self.conn_headers = True
            elif name == b"expect":
                self.expect = self.expect or value
            elif name == b"upgrade":
                self.upgrade = self.upgrade or value
            elif self.request_id is None:
                self.request_id = value
        self.connection: frozenset[bytes] = tokens if tokens is not None else _EMPTY

    def keep_alive(self, version: bytes) -> bool:
        if b"close" in self.connection:
            return False
        return version == b"1.1" or b"keep-alive" in self.connection

    def check(self, version: bytes, path: bytes) -> GatewayError | None:
        """Framing and target checks llhttp leaves to us."""
        if not path.startswith(b"/"):
            return BadHttpRequestError("bad_request_target")
        if len(self.hosts) > 1 or (version == b"1.1" and not self.hosts):
            return BadHttpRequestError("bad_host_header")
        te, cl = self.te, self.cl
        if te and (cl or len(te) > 1 or te[0].strip().lower() != b"chunked" or version != b"1.1"):
            return BadHttpRequestError("bad_transfer_encoding")
        if len(cl) > 1 or (cl and not cl[0].isdigit()):
            return BadHttpRequestError("bad_content_length")
        return None


def absolute_form(url: bytes) -> tuple[bytes, bytes, bytes | None]:
    """`http://host[:port]/path?q` -> (path, query, host); anything else is refused later."""
    lower = url[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            rest = url[len(scheme) :]
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            path, _, query = target.partition(b"?")
            return path, query, authority.rpartition(b"@")[2] or None
    return url, b"", None
