"""HTTP/1.1 framing of the answers the gateway writes to its clients: the status line and the
headers the gateway adds (X-Request-Id, Cache-Control: private, Content-Length or chunked,
Connection), chunked body pieces, and the `101` that opens a tunnel. The exchange decides what
to answer; only this module knows how HTTP/1.1 frames it."""

from __future__ import annotations

from typing import Final

from gateway.http import wire

LAST_CHUNK: Final = b"0\r\n\r\n"


def response_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    version: bytes,
    length: int | None,
    chunked: bool,
    keep_alive: bool,
    request_id: str,
    private_cache: bool,
    added: str = "",
) -> bytes:
    """Status line, `headers`, then the gateway's own: X-Request-Id, Cache-Control: private
    (RFC 6750 2.3), `added` (whole header lines, e.g. `RateLimit`; "" for none), the body's
    framing and what becomes of the connection. An HTTP/1.0 client gets a 1.0 status line and
    an explicit keep-alive."""
    framing = ""
    if length is not None:
        length_text = str(length)
        framing = f"content-length: {length_text}\r\n"
    elif chunked:
        framing = "transfer-encoding: chunked\r\n"
    if not keep_alive:
        connection = "connection: close\r\n"
    elif version == b"1.0":
        connection = "connection: keep-alive\r\n"
    else:
        connection = ""
    cache = "cache-control: private\r\n" if private_cache else ""
    # the headers the gateway adds, as one str (compiled: one allocation) and one encode
    ours = (f"x-request-id: {request_id}\r\n{cache}{added}{framing}{connection}\r\n").encode()
    return wire.render_head(status, headers, version if version == b"1.0" else b"1.1", ours)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One piece of a chunked body (never empty: an empty chunk ends the body)."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


def switching_head(headers: list[tuple[bytes, bytes]], request_id: str) -> bytes:
    """The `101 Switching Protocols` relayed from the upstream, with our X-Request-Id."""
    return wire.render_head(101, [*headers, (b"x-request-id", request_id.encode())])
