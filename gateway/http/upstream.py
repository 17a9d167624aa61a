"""Pooled keep-alive HTTP/1.1 connections to upstream targets, parsed with httptools.

An UpstreamConnection relays one exchange at a time: it writes the request head and body
(backpressure both ways) and streams the answer into the client's Exchange.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.http import wire
from gateway.http.fastscan import INCOMPLETE, MAX_PARTIAL_READS, may_become_head, scan_response

if TYPE_CHECKING:
    from gateway.http.exchange import ClientConnection, Exchange
    from gateway.http.pool import Target, UpstreamPool

OnError = Callable[[GatewayError], None]
#: response headers not simply copied: framing, hop-by-hop, ours (X-Request-Id), Cache-Control
_RESPONSE_SPECIAL: Final = wire.HOP_BY_HOP | {b"content-length", b"x-request-id", b"cache-control"}
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive"})
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_JOIN_LIMIT: Final = 64 * 1024  # below this, pieces are joined into one write; above, writelines
_WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
#: An answer's head may hold at most this many fields, and a head still incomplete after this
#: many bytes is refused (llhttp sets no bound, and httptools buffers a field until it ends):
#: an upstream that sends more gets 502, not the gateway's memory.
MAX_RESPONSE_FIELDS: Final = 500
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024


def websocket_accepted(ex: Exchange, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a 101 with these headers answers the client's WebSocket handshake (RFC 6455
    4.2.2): the client asked for it, and the answer names `websocket` and carries the
    Sec-WebSocket-Accept of the client's key."""
    if not ex.head.upgrade:
        return False
    key = ex.head.header(b"sec-websocket-key")
    upgrade: bytes | None = None
    accept: bytes | None = None
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value
        elif name == b"sec-websocket-accept":
            accept = value
    if key is None or upgrade is None or accept is None:
        return False
    if upgrade.strip().lower() != b"websocket":
        return False
    digest = hashlib.sha1(key.strip() + _WEBSOCKET_GUID, usedforsecurity=False).digest()
    return accept.strip() == base64.b64encode(digest)


_ANSWER_START: Final = (b"HTTP/1.1 ",)  # how an answer head the scanner may take begins


class UpstreamResetError(UpstreamError):
    """The connection closed before any byte of the answer (safe to retry a bodyless request)."""


class UpstreamConnection(asyncio.Protocol):
    """One upstream TCP connection; idle in its pool or bound to one exchange."""

    def __init__(self, pool: UpstreamPool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.on_error: OnError | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._chunked_body = False
        self._head_request = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # read while the answer's head is incomplete
        self._got_bytes = False
        self._head_done = False
        self._informational = False
        self._close_delimited = False
        self._keep_alive = True
        self._skip_rest = False
        self.deadline = 0.0  # checked by the pool's sweep, not by a timer per request
        self.timeout = 0.0
        self._last_activity = 0.0
        self._out: list[bytes] = []
        self._corked = False
        self._switching = False  # a 101 came: the tunnel opens once llhttp stops parsing
        # the fast path (see _scan): on until the first answer the scanner leaves to llhttp
        self._fast = True
        self._head_buf = b""  # the start of an answer head not complete yet
        self._head_reads = 0  # reads the head in _head_buf came in (MAX_PARTIAL_READS)
        self._body_left = 0  # bytes of a fast-path answer body still to come
        self._tunnel_client: ClientConnection | None = None
        self._tunnel_ex: Exchange | None = None

    # ---------------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._tunnel_client is not None:
            self._tunnel_client.close()
            return
        if self.ex is None:
            return
        if self._head_done and self._close_delimited:
            self._complete()  # the answer was delimited by the close
        elif not self._got_bytes:
            if _tls_alert(exc) and not self.reused:
                # TLS 1.3: an upstream refuses our client certificate (or its absence) with
                # an alert once our side of the handshake is done; never retried
                self._fail(UpstreamError("upstream_tls"))
            else:
                self._fail(UpstreamResetError("upstream_reset"))
        else:
            self._fail(UpstreamError("upstream_truncated"))

    def data_received(self, data: bytes) -> None:
        if self._tunnel_client is not None:
            self._tunnel_client.write(data)
            return
        bound = self.ex is not None  # not narrowed: the parser's callbacks may unbind it
        if self._skip_rest or not bound:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self._got_bytes = True
        self._last_activity = time.monotonic()
        size = len(data)
        if self._fast:
            data = self._scan(data)
        if data:
            self._parse(data)
        if not self._head_done:  # (rare) the head goes on past this read: bounded
            self._head_bytes += size
            if self._head_bytes > MAX_RESPONSE_HEAD_BYTES and self.ex is not None:
                self._fail(UpstreamError("upstream_head_too_large"))
                self.close()
        ex = self.ex
        if ex is not None:
            if self._skip_rest:
                self._complete()  # HEAD answer: its head was all of it
            else:
                ex.flush()  # one write to the client per read from the upstream

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upg:
            self._upgraded(data[upg.args[0] :])
        except httptools.HttpParserError as err:
            cause = err.__context__  # a callback's own error (a head over its bounds)
            self._fail(
                cause
                if isinstance(cause, UpstreamError)
                else UpstreamError("upstream_bad_response")
            )
            self.close()

    def _scan(self, data: bytes) -> bytes:
        """The fast path, as the server's (gateway/http/server.py): an answer head that
        gateway/http/_scan.c takes (HTTP/1.1, a final status with a body of Content-Length
        bytes, no Transfer-Encoding) and its body never reach llhttp. Returns what llhttp must
        parse: the first answer the scanner leaves to it, and all after it on this connection
        (b"": all used)."""
        left = self._body_left
        if left:
            if len(data) > left:  # more than the answer: this connection is not reused
                self._keep_alive = False
                data = data[:left]
            self._body_left = left - len(data)
            self.on_body(data)
            if not self._body_left:
                self.on_message_complete()
            return b""
        buf = data
        if self._head_buf:
            buf = self._head_buf + data
            self._head_buf = b""
        found = scan_response(buf, 0, MAX_RESPONSE_FIELDS)
        if isinstance(found, int):
            if (
                found == INCOMPLETE
                and self._head_reads < MAX_PARTIAL_READS
                and len(buf) <= MAX_RESPONSE_HEAD_BYTES
                and may_become_head(buf, 0, _ANSWER_START)
            ):
                self._head_reads += 1
                self._head_buf = buf
                return b""
            self._fast = False
            return buf
        end, status, headers, length = found
        self._head_reads = 0
        self._headers = headers
        self._head_complete(status, "1.1")
        if self._skip_rest or self.ex is None:
            return b""  # a HEAD answer (all of it was its head), or one nobody waits for
        size = len(buf) - end
        if size > length:
            self._keep_alive = False  # more than the answer: this connection is not reused
            size = length
        if size:
            self.on_body(buf[end : end + size])
        if size < length:
            self._body_left = length - size
        else:
            self.on_message_complete()
        return b""

    # The upstream reads slowly: stop reading the client (request body, or tunnel bytes)
    def pause_writing(self) -> None:
        ex = self._tunnel_ex or self.ex
        if ex is not None:
            ex.pause_reading()

    def resume_writing(self) -> None:
        ex = self._tunnel_ex or self.ex
        if ex is not None:
            ex.resume_reading()

    # Producer: the client is slow, stop reading the upstream
    def pause_producing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_producing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    # ---------------------------------------------------------------- exchange
    def send(
        self, ex: Exchange, head: bytes, chunked: bool, timeout: float, on_error: OnError
    ) -> None:
        """Bind the exchange; the head waits for the body's first pieces (see flush)."""
        self.ex = ex
        self.on_error = on_error
        self._head_request = ex.head.method == "HEAD"
        self._switching = False
        self._chunked_body = chunked
        self._got_bytes = self._head_done = self._informational = False
        self._close_delimited = self._skip_rest = False
        self._keep_alive = True
        now = time.monotonic()
        self._last_activity = now
        self.timeout = timeout
        self.deadline = now + timeout
        self.pool.busy(self)
        self._out.append(head)
        self._corked = True

    def flush(self) -> None:
        """Write what was corked (the head and any buffered body) at once."""
        self._corked = False
        out, self._out = self._out, []
        if not out or self.transport is None or self.closed:
            return
        if len(out) == 1:
            self.transport.write(out[0])
        elif sum(map(len, out)) <= _JOIN_LIMIT:
            self.transport.write(b"".join(out))
        else:
            self.transport.writelines(out)

    def write_body(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if self._chunked_body:
            pieces: tuple[bytes, ...] = (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            pieces = (data,)
        if self._corked:
            self._out.extend(pieces)
        else:
            self.transport.writelines(pieces)

    def end_body(self) -> None:
        if self._chunked_body and self.transport is not None and not self.closed:
            if self._corked:
                self._out.append(b"0\r\n\r\n")
            else:
                self.transport.write(b"0\r\n\r\n")

    def abort_body(self, exc: GatewayError) -> None:
        self._fail(exc)
        self.abort()

    def check_deadline(self, now: float) -> None:
        """Called by the pool's sweep: `timeout` bounds the wait for the head, then the
        silence between reads."""
        if self.ex is None:
            return
        if self._head_done and now - self._last_activity < self.timeout:
            self.deadline = self._last_activity + self.timeout
            return
        self._fail(UpstreamTimeoutError("upstream_timeout"))
        self.abort()

    def _detach(self) -> Exchange | None:
        """Unbind the exchange from this connection."""
        self.pool.idle_again(self)
        self._out.clear()
        self._corked = False
        ex, self.ex = self.ex, None
        if ex is not None:
            ex.producer = None
            ex.detach_sink(self)  # no more body bytes into a connection it no longer owns
        return ex

    def _fail(self, exc: GatewayError) -> None:
        if self._detach() is not None and self.on_error is not None:
            on_error, self.on_error = self.on_error, None
            on_error(exc)

    def _complete(self) -> None:
        # An answer can complete before the request body was all sent (an upstream answering
        # early): the upstream would read the next request as the rest of that body (desync).
        sent_all = self.ex is None or (self.ex.body_complete and self.ex.body_error is None)
        ex = self._detach()
        self.on_error = None
        if ex is not None:
            ex.finish()
        reusable = (
            sent_all and self._keep_alive and not self._close_delimited and not self._skip_rest
        )
        if self._skip_rest:
            self.parser = httptools.HttpResponseParser(self)
            reusable = sent_all and self._keep_alive
            self._skip_rest = False
        self.pool.release(self, reusable)

    # ---------------------------------------------------------- parser callbacks
    # The header list is replaced once a head has been used.
    def on_message_begin(self) -> None:
        """llhttp begins an answer. With no exchange bound, the answer before it was complete
        and these bytes came after it in the same read: an answer nobody asked for (a desync,
        or one planted for the next request). The connection is closed, never reused. (A call
        from C into Python per answer, on llhttp's path only: the scanner's path checks the
        same with the bytes past Content-Length.)"""
        if self.ex is None:
            self._keep_alive = False
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= MAX_RESPONSE_FIELDS:
            raise UpstreamError("upstream_head_too_large")  # httptools: HttpParserCallbackError
        headers.append((wire.lower_name(name), value))

    def on_headers_complete(self) -> None:
        self._head_complete(self.parser.get_status_code(), None)

    def _head_complete(self, status: int, version: str | None) -> None:
        """An answer's head: `version` as the scanner read it, None to ask llhttp."""
        self._head_bytes = 0
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100/103: not relayed, the final answer follows
            self._headers = []
            return
        headers = self._headers
        if status != 101:  # a 101's headers are read again by _upgraded()
            self._headers = []  # never carried into the next answer on this connection
        ex = self.ex
        if ex is None:
            return
        self._head_done = True
        length: int | None = None
        chunked = False
        connection: bytes | None = None
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:  # one pass; most headers are copied as they are
            if name not in _RESPONSE_SPECIAL:
                out.append((name, value))
            elif name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif name == b"cache-control" and not ex.private_cache:
                out.append((name, value))
        tokens = wire.connection_tokens(connection) if connection is not None else _NO_TOKENS
        # The version is read only when the Connection header does not decide (httptools
        # formats it into a new string on every call).
        self._keep_alive = b"close" not in tokens and (
            b"keep-alive" in tokens
            or (version if version is not None else self.parser.get_http_version()) == "1.1"
        )
        if tokens and not tokens <= _CONNECTION_OPTIONS:
            named = tokens - _CONNECTION_OPTIONS  # headers listed in Connection: this hop only
            out = [(n, v) for n, v in out if n not in named]
        no_body = self._head_request or status in (204, 304) or status == 101
        if chunked:
            length = None
        elif length is None and not no_body:
            self._close_delimited = True
        if status == 101:
            self._switching = True  # _upgraded() relays it with the headers it keeps
            return
        ex.producer = self
        ex.start_response(status, out, length, no_body=no_body)
        if ex.conn.write_paused:
            self.pause_producing()
        if self._head_request:
            self._skip_rest = True

    def on_body(self, body: bytes) -> None:
        if self.ex is not None and not self._skip_rest:
            self.ex.write(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.ex is not None and not self._skip_rest and not self._switching:
            self._close_delimited = False
            self._complete()

    # ---------------------------------------------------------------- upgrade
    def _upgraded(self, rest: bytes) -> None:
        ex = self.ex
        if ex is None or self.transport is None or ex.conn.closed:
            self.close()
            return
        if not websocket_accepted(ex, self._headers):
            # WebSocket smuggling: a 101 that is not the answer to this client's handshake
            # (an endpoint made to answer 101, or to a request that asked for no upgrade)
            # would make the client connection a raw tunnel to the upstream, past every check
            self._headers = []
            self._fail(UpstreamError("upstream_bad_upgrade"))
            self.close()
            return
        self.pool.idle_again(self)
        headers = [
            (n, v)
            for n, v in self._headers
            if n not in wire.HOP_BY_HOP or n in (b"connection", b"upgrade")
        ]
        self._tunnel_ex = ex
        ex.producer = self  # a slow client pauses the upstream side of the tunnel
        self.ex = None
        self.on_error = None
        self._tunnel_client = ex.switch_protocols(headers, rest, self.transport)


def _tls_alert(exc: Exception | None) -> bool:
    """A TLS error other than the peer closing (an EOF is a reset like any other)."""
    return isinstance(exc, ssl.SSLError) and not isinstance(
        exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
    )
