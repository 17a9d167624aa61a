"""Pooled keep-alive HTTP/1.1 connections to upstream targets, parsed with httptools.

An UpstreamConnection relays one exchange at a time: it writes the request head and body
(backpressure both ways) and streams the answer into the client's Exchange.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

import httptools

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.http import wire

if TYPE_CHECKING:
    from gateway.http.exchange import Exchange
    from gateway.http.pool import Target, UpstreamPool

_IDLE_SWEEP = 1.0


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
        self.done: asyncio.Future[None] | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._chunked_body = False
        self._head_request = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._got_bytes = False
        self._head_done = False
        self._informational = False
        self._close_delimited = False
        self._keep_alive = True
        self._skip_rest = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._tunnel_client: asyncio.Transport | None = None
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
            self._fail(UpstreamResetError("upstream_reset"))
        else:
            self._fail(UpstreamError("upstream_truncated"))

    def data_received(self, data: bytes) -> None:
        if self._tunnel_client is not None:
            self._tunnel_client.write(data)
            return
        if self.ex is None or self._skip_rest:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self._got_bytes = True
        self._last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upg:
            self._upgraded(data[upg.args[0] :])
        except httptools.HttpParserError:
            self._fail(UpstreamError("upstream_bad_response"))
            self.close()
        if self._skip_rest and self.ex is not None:
            self._complete()  # HEAD answer: its head was all of it

    def pause_writing(self) -> None:
        if self._tunnel_ex is not None:
            self._tunnel_ex.pause_reading()
        elif self.ex is not None:
            self.ex.pause_reading()

    def resume_writing(self) -> None:
        if self._tunnel_ex is not None:
            self._tunnel_ex.conn.resume_reading_tunnel()
        elif self.ex is not None:
            self.ex.resume_reading()

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
        self, ex: Exchange, head: bytes, chunked: bool, timeout: float
    ) -> asyncio.Future[None]:
        """Write the head; the body follows through the BodySink methods."""
        assert self.transport is not None
        self.ex = ex
        self._head_request = ex.method == "HEAD"
        self._chunked_body = chunked
        self._got_bytes = self._head_done = self._informational = False
        self._close_delimited = self._skip_rest = False
        self._keep_alive = True
        loop = self.pool.loop
        self.done = loop.create_future()
        self._last_activity = time.monotonic()
        self._timer = loop.call_later(timeout, self._on_timeout, timeout)
        self.transport.write(head)
        return self.done

    def write_body(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if self._chunked_body:
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)

    def end_body(self) -> None:
        if self._chunked_body and self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")

    def abort_body(self, exc: GatewayError) -> None:
        self._fail(exc)
        self.abort()

    def _on_timeout(self, timeout: float) -> None:
        self._timer = None
        if self.ex is None:
            return
        idle_for = time.monotonic() - self._last_activity
        if self._head_done and idle_for < timeout:
            self._timer = self.pool.loop.call_later(timeout - idle_for, self._on_timeout, timeout)
            return
        self._fail(UpstreamTimeoutError("upstream_timeout"))
        self.abort()

    def _detach(self) -> Exchange | None:
        """Unbind the exchange (and its timer) from this connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ex, self.ex = self.ex, None
        if ex is not None:
            ex.producer = None
        return ex

    def _fail(self, exc: GatewayError) -> None:
        self._detach()
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def _complete(self) -> None:
        ex = self._detach()
        if ex is not None:
            ex.finish()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
        reusable = self._keep_alive and not self._close_delimited and not self._skip_rest
        if self._skip_rest:
            self.parser = httptools.HttpResponseParser(self)
            reusable = self._keep_alive
            self._skip_rest = False
        self.pool.release(self, reusable)

    # ---------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100/103: not relayed, the final answer follows
            return
        ex = self.ex
        if ex is None:
            return
        self._head_done = True
        headers = self._headers
        tokens = wire.connection_tokens(headers)
        version = self.parser.get_http_version()
        self._keep_alive = b"close" not in tokens and (version == "1.1" or b"keep-alive" in tokens)
        length: int | None = None
        chunked = False
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif (
                name in wire.HOP_BY_HOP
                or name in tokens
                or name == b"x-request-id"
                or (name == b"cache-control" and ex.private_cache)
            ):
                continue
            else:
                out.append((name, value))
        no_body = self._head_request or status in (204, 304) or status == 101
        if chunked:
            length = None
        elif length is None and not no_body:
            self._close_delimited = True
        if status == 101:
            out.extend((n, v) for n, v in headers if n in (b"connection", b"upgrade"))
            ex.status = 101
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
        if self.ex is not None and not self._skip_rest and self.ex.status != 101:
            self._close_delimited = False
            self._complete()

    # ---------------------------------------------------------------- upgrade
    def _upgraded(self, rest: bytes) -> None:
        ex = self.ex
        if ex is None or self.transport is None or ex.conn.transport is None:
            self.close()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        headers = [
            (n, v)
            for n, v in self._headers
            if n not in wire.HOP_BY_HOP or n in (b"connection", b"upgrade")
        ]
        headers.append((b"x-request-id", ex.request_id.encode()))
        ex.response_started = True
        ex.status = 101
        ex.conn.write(wire.render_head(101, headers))
        if rest:
            ex.conn.write(rest)
        self._tunnel_client = ex.conn.transport
        self._tunnel_ex = ex
        ex.producer = self  # a slow client pauses the upstream side of the tunnel
        ex.finished = True
        ex.conn.start_tunnel(self.transport, ex)
        self.ex = None
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
