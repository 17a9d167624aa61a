"""Interpreting a request head: target forms, keep-alive, and the framing checks llhttp
leaves to us (smuggling: CL with TE, duplicate CL, TE other than exactly `chunked`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import BadHttpRequestError, GatewayError
from gateway.http import wire

if TYPE_CHECKING:
    from gateway.http.exchange import Exchange


def first_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def wants_keep_alive(version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    tokens = wire.connection_tokens(headers)
    if b"close" in tokens:
        return False
    return version == b"1.1" or b"keep-alive" in tokens


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


def check_head(ex: Exchange, hosts: list[bytes], path: bytes) -> GatewayError | None:
    """Framing and target checks llhttp leaves to us."""
    if not path.startswith(b"/"):
        return BadHttpRequestError("bad_request_target")
    if len(hosts) > 1 or (ex.version == b"1.1" and not hosts):
        return BadHttpRequestError("bad_host_header")
    te = [v for n, v in ex.headers if n == b"transfer-encoding"]
    cl = [v for n, v in ex.headers if n == b"content-length"]
    if te and (cl or len(te) > 1 or te[0].strip().lower() != b"chunked" or ex.version != b"1.1"):
        return BadHttpRequestError("bad_transfer_encoding")
    if len(cl) > 1 or (cl and not cl[0].isdigit()):
        return BadHttpRequestError("bad_content_length")
    return None
