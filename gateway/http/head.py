"""Interpreting a request head: one pass over the headers collects what the server needs
(target forms, keep-alive, framing) and the smuggling checks llhttp leaves to us (CL with TE,
duplicate CL, TE other than exactly `chunked`, missing, empty or repeated Host)."""

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
        "cl_count",
        "conn_headers",
        "connection",
        "expect",
        "host",
        "host_count",
        "request_id",
        "te",
        "te_count",
        "upgrade",
    )

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        # the first value and how many were sent (no list per request)
        self.host: bytes | None = None
        self.host_count = 0
        self.te: bytes | None = None
        self.te_count = 0
        self.cl: bytes | None = None
        self.cl_count = 0
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
                self.host_count += 1
                self.host = self.host or value
            elif name == b"transfer-encoding":
                self.te_count += 1
                self.te = self.te or value
            elif name == b"content-length":
                self.cl_count += 1
                self.cl = self.cl or value
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
        if self.host_count > 1 or (version == b"1.1" and not self.host_count):
            return BadHttpRequestError("bad_host_header")
        if self.host_count and not self.host:
            # an empty Host (nginx: 400), in any version; llhttp strips leading whitespace, so
            # one of only spaces and tabs arrives empty too. HTTP/1.0 may still omit it.
            return BadHttpRequestError("bad_host_header")
        te, cl = self.te, self.cl
        if self.te_count and (
            self.cl_count
            or self.te_count > 1
            or te is None
            or te.strip().lower() != b"chunked"
            or version != b"1.1"
        ):
            return BadHttpRequestError("bad_transfer_encoding")
        if self.cl_count > 1 or (self.cl_count and (cl is None or not cl.isdigit())):
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
