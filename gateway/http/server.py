"""The main listener: an asyncio Protocol HTTP/1.1 server on httptools (llhttp).

Owns parsing, limits, smuggling checks, keep-alive, pipelining (answers in order), flow control
and the Upgrade hand-off. What to do with a request is the handler's business (pipeline.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, cast

import httptools
import structlog

from gateway.errors import (
    BadHttpRequestError,
    GatewayError,
    HeadersTooLargeError,
    OverloadedError,
    UriTooLongError,
)
from gateway.http import wire
from gateway.http.exchange import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    ClientConnection,
    Exchange,
    RequestHead,
)
from gateway.http.fastscan import INCOMPLETE, MAX_PARTIAL_READS, may_become_head, scan_request
from gateway.http.head import HeadScan, absolute_form

log = structlog.get_logger("gateway")
#: llhttp's method names as str, looked up instead of decoded per request
_METHODS: Final[dict[bytes, str]] = {
    m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
}
#: how a head the scanner may still take begins: a partial one is kept until it is complete
_FAST_STARTS: Final = tuple(m + b" /" for m in _METHODS)
Handler = Callable[[Exchange], None]  # answers now, or starts a task; ends with ex.end()


@dataclass
class ServerContext:
    """What every connection of one listener shares; `handler` and limits change on reload."""

    handler: Handler
    scheme: str = "http"  # what clients used to reach this listener (X-Forwarded-Proto)
    client_certs: bool = False  # a TLS listener that asks clients for a certificate
    realm: str = "gateway"
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_url_bytes: int = 8 * 1024
    max_in_flight: int = 10_000
    keepalive_timeout: float = 75.0
    header_timeout: float = 30.0
    #: Lingering close (nginx's lingering_close): when an answer ends a connection whose client
    #: may still be sending (a refused head or body, unread pipelined bytes), the write side is
    #: shut after the answer and what the client still sends is read and dropped, at most
    #: `linger_time` in all, `linger_timeout` between reads and `linger_max_bytes`; then close.
    #: Closing with unread bytes would make the kernel send RST, and the client lose the answer.
    linger_time: float = 5.0
    linger_timeout: float = 2.0
    linger_max_bytes: int = 16 * 1024 * 1024
    #: A connection closed with bytes still buffered for a client that does not read them
    #: (nginx's send_timeout): cut off (reset) when `send_timeout` passes without the client
    #: taking any byte (the kernel's send queue counted too). A closing transport would
    #: otherwise wait for it forever, holding its buffer and socket.
    send_timeout: float = 60.0
    in_flight: int = 0
    draining: bool = False
    #: set when in_flight drops to 0 while draining (drain() clears it before waiting)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    connections: set[HttpServerProtocol] = field(default_factory=set)


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes of a connection its client has not taken yet: the transport's buffer, and the
    kernel's send queue (sent but not acknowledged; Linux's SIOCOUTQ) where it tells."""
    left = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
        except (OSError, ValueError):  # not a socket that tells (or closed meanwhile)
            return left
        left += int.from_bytes(queued, sys.byteorder, signed=True)
    return left


class HttpServerProtocol(ClientConnection):
    """One HTTP/1.1 client connection: parsing, limits, keep-alive, pipelining, flow control."""

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.scheme)
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Exchange] = deque()  # [0] is being answered; later ones are pipelined
        self.current: Exchange | None = None  # being parsed
        self.tunnel: asyncio.Transport | None = None
        self._parsing_stopped = False
        self._pending: Exchange | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._raw_head_bytes = 0  # bytes read while a head is incomplete (llhttp buffers them)
        self._header_bytes = 0  # parsed header names and values, against max_header_bytes
        self._in_head = False  # set by on_url: a head has begun
        self._in_trailers = False
        self._read_paused = False
        self._write_paused = False
        self._lingering = False  # see ServerContext.linger_time
        self._linger_bytes = 0
        self._linger_end = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0
        self._send_timer: asyncio.TimerHandle | None = None  # see ServerContext.send_timeout
        self._send_left = 0  # bytes still buffered when the send timer was last armed
        self._body_waiters: dict[Exchange, asyncio.Future[None]] = {}
        # The fast path (see _scan): heads the scanner takes, with their Content-Length bodies,
        # never reach llhttp. The first head it leaves to llhttp moves the connection to llhttp
        # for good: llhttp keeps state between messages that the scanner cannot hand back.
        self._fast = True
        self._head_buf = b""  # the start of a head not complete yet
        self._head_reads = 0  # reads the head in _head_buf came in (MAX_PARTIAL_READS)
        self._body_left = 0  # bytes of a fast-path body still to come

    # ------------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        if self.ctx.client_certs:  # a TLS transport: connection_made comes after the handshake
            tls = transport.get_extra_info("ssl_object")
            der = tls.getpeercert(binary_form=True) if tls is not None else None
            if der:
                self.peer_certificate = der  # verified, or the handshake would have failed
        self.ctx.connections.add(self)
        self._arm_timer(self.ctx.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self.tunnel is not None:
            self.tunnel.close()
        self._drop_requests()  # the client went away: stop the upstream exchanges too

    def _drop_requests(self) -> None:
        """End the requests still queued on this connection: they will not be answered."""
        for ex in list(self.queue):
            ex.client_gone()
        self.queue.clear()
        for fut in self._body_waiters.values():
            if not fut.done():
                fut.set_result(None)
        self._body_waiters.clear()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self._parsing_stopped:
            if self._lingering:
                self._discard(len(data))
            elif self.queue and self.queue[-1].head.upgrade:
                # before the tunnel is up (a WebSocket client waits for the 101 before it
                # sends): kept for the tunnel, and no more is read until then
                self.queue[-1].upgrade_data += data
                self.pause_reading()
            return  # after an ignored Upgrade (h2c) nothing more is read on this connection
        if self._fast:
            data = self._scan(data)
            if not data:
                self._start_pending()
                return
        if self._in_head:
            self._raw_head_bytes += len(data)
            limit = self.ctx.max_header_bytes + self.ctx.max_url_bytes + 1024
            if self._raw_head_bytes > limit:
                self._parse_failed(HeadersTooLargeError("head_over_limit"))
                return
        try:
            self.parser.feed_data(data)
            self._start_pending()
        except httptools.HttpParserUpgrade as upg:
            ex = self.queue[-1] if self.queue else None
            if ex is None:
                self._parse_failed(BadHttpRequestError("upgrade_without_request"))
                return
            self._parsing_stopped = True
            if ex.head.upgrade:
                ex.upgrade_data = data[upg.args[0] :]
            self.pause_reading()
            self._start_pending()
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            self._start_pending()
            self._parse_failed(
                cause if isinstance(cause, GatewayError) else BadHttpRequestError("bad_request")
            )
        except httptools.HttpParserError:
            self._start_pending()
            self._parse_failed(BadHttpRequestError("malformed_http"))

    def eof_received(self) -> bool | None:
        # A client that stops sending has gone away as far as a proxy can tell (nginx's 499):
        # close, which cancels the upstream exchange in connection_lost. A lingering
        # connection ends here too: the client has sent all it had.
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.queue and self.queue[0].producer is not None:
            self.queue[0].producer.pause_producing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.queue and self.queue[0].producer is not None:
            self.queue[0].producer.resume_producing()

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            if len(self.queue) > 1 and self.current is None:
                return  # pipelined requests wait their turn
            self._read_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(data)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def realm(self) -> str:
        return self.ctx.realm

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._close_transport()

    def _close_transport(self) -> None:
        """Close the client connection once what is buffered for it is sent; a client that
        stops taking it is cut off after ServerContext.send_timeout without progress."""
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if transport.get_write_buffer_size() and self._send_timer is None:
            self._send_left = _unsent(transport)
            self._send_timer = self.loop.call_later(self.ctx.send_timeout, self._on_send_timeout)

    def _on_send_timeout(self) -> None:
        self._send_timer = None
        transport = self.transport
        if transport is None or not transport.get_write_buffer_size():
            return  # all handed to the kernel: the transport finishes closing on its own
        left = _unsent(transport)
        if left < self._send_left:  # the client took some: another period
            self._send_left = left
            self._send_timer = self.loop.call_later(self.ctx.send_timeout, self._on_send_timeout)
            return
        log.info("client_send_timeout", client=self.client_ip, unsent=left)
        transport.abort()  # the client stopped reading (a slow-read attack, or gone quiet)

    def abort(self) -> None:
        if self.transport is not None:  # also a closing or lingering one (drain, shutdown)
            self.transport.abort()

    def _arm_timer(self, seconds: float) -> None:
        """Close the connection once it has been idle for `seconds`. Re-arming is lazy: a
        pending timer is kept and, when it fires early, re-armed for the rest of the wait."""
        self._idle_deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(self._idle_deadline, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        if self.queue or self.transport is None:
            return  # busy: the next idle period arms it again
        if self.loop.time() < self._idle_deadline:
            self._timer = self.loop.call_at(self._idle_deadline, self._on_timeout)
            return
        self._close_transport()  # idle keep-alive or a slow head (slowloris)

    # ------------------------------------------------------------- parser callbacks
    # No on_message_begin: httptools calls every callback the protocol defines (about 1.5k
    # instructions a call from C into Python). The state for the next head is set when a
    # message completes (and at connection start) instead.
    def _expect_head(self) -> None:
        self._url = b""
        self._headers = []
        self._raw_head_bytes = self._header_bytes = 0
        self._in_head = False  # until the first piece of the next URL
        self._in_trailers = False

    def on_url(self, url: bytes) -> None:
        self._in_head = True  # later reads count against the head's size until it completes
        self._url += url
        if len(self._url) > self.ctx.max_url_bytes:
            raise UriTooLongError("url_over_limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        ctx = self.ctx
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > ctx.max_header_bytes:
            raise HeadersTooLargeError("headers_over_limit")
        if self._in_trailers:
            # chunked trailer fields are never merged into the head (RFC 9110 6.5.1): they
            # count against max_header_bytes with the head, not against max_header_count,
            # which bounds the fields kept and sent upstream
            return
        headers = self._headers
        if len(headers) >= ctx.max_header_count:
            raise HeadersTooLargeError("too_many_headers")
        headers.append((wire.lower_name(name), value))

    def on_headers_complete(self) -> None:
        if self.closed:
            # the connection was closed by an answer given while this read was being parsed
            # (a body over its limit): what follows is never a request
            raise BadHttpRequestError("request_after_close")
        p = self.parser
        raw_method = p.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        headers = self._headers
        scan = HeadScan(headers)
        # Without Connection/Proxy-Connection headers llhttp's keep-alive answer is exactly
        # "this is HTTP/1.1" (the only version with a minor > 0 it accepts), and cheaper than
        # get_http_version(), which formats a new string.
        if not scan.conn_headers and p.should_keep_alive():
            version = b"1.1"
        else:
            version = p.get_http_version().encode()
        self._head_parsed(self._new_exchange(method, self._url, headers, version, scan))

    def _head_parsed(self, ex: Exchange) -> None:
        self._in_head = False
        self._in_trailers = True
        self.current = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._pending = ex  # started once this read is parsed, outside the parser
        else:
            self.pause_reading()  # pipelining: answer in order, read on after

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.feed_body(body)

    def on_message_complete(self) -> None:
        self._expect_head()
        ex = self.current
        self.current = None
        if ex is None:
            return
        if not ex.head.upgrade:
            ex.end_of_body()
        self.wake_body_waiter(ex)

    # ------------------------------------------------------------ request building
    def _scan(self, data: bytes) -> bytes:
        """The fast path: the heads gateway/http/_scan.c takes (a strict subset of HTTP/1.1,
        nothing llhttp would read otherwise) become exchanges here, with their Content-Length
        bodies, without llhttp and its call into Python per header. Returns what llhttp must
        parse: from the first head the scanner leaves to it, and on this connection from then
        on (b"": all used)."""
        left = self._body_left
        if left:
            if len(data) <= left:
                self._body_left = left - len(data)
                self.on_body(data)
                if not self._body_left:
                    self.on_message_complete()
                return b""
            self._body_left = 0
            self.on_body(data[:left])
            self.on_message_complete()
            data = data[left:]
        buf = data
        if self._head_buf:
            buf = self._head_buf + data
            self._head_buf = b""
        ctx = self.ctx
        pos = 0
        size = len(buf)
        while pos < size:
            if self.closed:
                return b""  # an answer ended the connection: what follows is never a request
            found = scan_request(
                buf, pos, ctx.max_url_bytes, ctx.max_header_bytes, ctx.max_header_count
            )
            if isinstance(found, int):
                if (
                    found == INCOMPLETE
                    and self._head_reads < MAX_PARTIAL_READS
                    and size - pos <= ctx.max_header_bytes + ctx.max_url_bytes
                    and may_become_head(buf, pos, _FAST_STARTS)
                ):
                    self._head_reads += 1
                    self._head_buf = buf[pos:] if pos else buf
                    self._in_head = True  # a head has begun (lingering close, slowloris)
                    return b""
                break
            end, method, url, headers, length = found
            self._head_reads = 0
            scan = HeadScan(headers)
            if not scan.keep_alive(b"1.1"):
                break  # the connection's last request: llhttp's rules for what follows it
            self._head_parsed(self._new_exchange(method, url, headers, b"1.1", scan))
            pos = end
            if length > 0:
                take = min(length, size - pos)
                self.on_body(buf[pos : pos + take])
                pos += take
                if take < length:
                    self._body_left = length - take
                    return b""
            self.on_message_complete()
        else:
            return b""
        self._fast = False
        self._in_head = False
        return buf[pos:] if pos else buf

    def _new_exchange(
        self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], version: bytes,
        scan: HeadScan,
    ) -> Exchange:  # fmt: skip
        if url.startswith(b"/"):
            path, _, query = url.partition(b"?")
            host: bytes | None = scan.host
        else:
            path, query, host = absolute_form(url)
        keep_alive = scan.keep_alive(version) and not self.ctx.draining
        error = (
            BadHttpRequestError("connect_not_supported")
            if method == "CONNECT"
            else scan.check(version, path)
        )
        upgrade = scan.upgrade
        if upgrade is not None and b"upgrade" in scan.connection:
            keep_alive = False  # llhttp stops parsing after an Upgrade request's head
            # a WebSocket handshake has no body (one with a body is refused below)
            websocket = upgrade.strip().lower() == b"websocket" and not _has_body(scan)
        else:
            websocket = False
        head = RequestHead(
            method,
            path.decode("latin-1"),
            query.decode("latin-1"),
            headers,
            version,
            host.decode("latin-1").lower() if host is not None else None,
            wire.request_id(scan.request_id),
            scan.connection,
            websocket,
        )
        ex = Exchange(self, head, keep_alive, error)
        self._set_body_mode(ex, scan)
        if self.ctx.in_flight >= self.ctx.max_in_flight and ex.preset_error is None:
            ex.preset_error = OverloadedError("max_in_flight")
        return ex

    def _set_body_mode(self, ex: Exchange, scan: HeadScan) -> None:
        """The request body's framing, the expectation, and what an upgrade may carry."""
        if scan.te_count:
            ex.body_mode = BODY_CHUNKED
            ex.body_complete = False
        elif scan.cl is not None:
            cl = scan.cl
            ex.content_length = int(cl) if cl.isdigit() else 0
            if ex.content_length > 0:
                ex.body_mode = BODY_LENGTH
                ex.body_complete = False
        expect = scan.expect
        if expect is not None:
            if expect.lower() == b"100-continue":
                ex.expect_continue = ex.head.version == b"1.1"
            elif ex.preset_error is None:
                ex.preset_error = BadHttpRequestError("unsupported_expectation")
        if (
            scan.upgrade is not None
            and b"upgrade" in scan.connection
            and ex.body_mode != BODY_NONE
            and ex.preset_error is None
        ):
            # llhttp hands the body of an Upgrade request over as bytes of the new protocol:
            # it would never reach an upstream waiting for it. Refused, for WebSocket (whose
            # handshake is a GET without a body) as for any other; h2c and other protocols
            # are never relayed (h2c smuggling), a bodyless request is answered as HTTP/1.1.
            ex.preset_error = BadHttpRequestError("upgrade_with_body")

    # ---------------------------------------------------------------- answering
    def _start_pending(self) -> None:
        ex, self._pending = self._pending, None
        if ex is not None:
            self._start(ex)

    def _start(self, ex: Exchange) -> None:
        """Hand the exchange to the handler: the fast path answers without a task."""
        if ex.ended or self.closed:
            return
        ex.started = True
        self.ctx.in_flight += 1
        try:
            self.ctx.handler(ex)
        except Exception:  # a handler bug must not take the connection's other requests down
            log.exception("handler_failed", request_id=ex.head.request_id)
            ex.abort()

    def exchange_ended(self, ex: Exchange) -> None:
        if not ex.started:
            return  # queued behind another answer and dropped: never counted
        ctx = self.ctx
        ctx.in_flight -= 1
        if ctx.in_flight == 0 and ctx.draining:
            ctx.idle.set()  # only a drain waits on it (asyncio.Event costs two Python calls)

    def exchange_finished(self, ex: Exchange) -> None:
        """The answer to queue[0] is complete: close, or move to the next pipelined request."""
        if not self.queue or self.queue[0] is not ex:
            return
        self.queue.popleft()
        if not ex.keep_alive or self.ctx.draining:
            transport = self.transport
            if transport is not None and not self.closed:
                if self._client_may_be_sending(ex):
                    self._linger(transport)
                else:
                    self.closed = True
                    self._close_transport()
            return
        if self.queue:
            self.loop.call_soon(self._start, self.queue[0])  # not recursively: pipelines are long
        else:
            self._arm_timer(self.ctx.keepalive_timeout)
        if self.current is None or not self.queue:
            self.resume_reading()

    def _client_may_be_sending(self, ex: Exchange) -> bool:
        """Whether closing now could leave bytes of the client unread: after an error answer,
        a request body not read to its end, a broken or stopped parse, or pipelined requests."""
        return (
            ex.error is not None
            or not ex.body_complete
            or ex.body_error is not None
            or self._parsing_stopped
            or self._in_head
            or self.current is not None
            or bool(self.queue)
        )

    def _linger(self, transport: asyncio.Transport) -> None:
        """Lingering close: the answer is out (FIN after it where the transport can half-close;
        TLS cannot), what the client still sends is read and dropped, never parsed, within
        the ServerContext.linger_* bounds; then the connection closes (see data_received)."""
        self.closed = True
        self._drop_requests()  # pipelined requests behind this answer are not answered
        self._lingering = self._parsing_stopped = True
        self.current = self._pending = None
        self._in_head = False
        if transport.is_closing():
            return
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):  # the peer has gone already
                self._close_transport()
                return
        ctx = self.ctx
        self._linger_end = self.loop.time() + ctx.linger_time
        if self._timer is not None:
            self._timer.cancel()  # it may be set later than the lingering bounds
            self._timer = None
        self._arm_timer(min(ctx.linger_timeout, ctx.linger_time))
        self._read_paused = False
        transport.resume_reading()

    def _discard(self, size: int) -> None:
        """Bytes read while lingering: counted against the bounds, dropped."""
        self._linger_bytes += size
        ctx = self.ctx
        if self._linger_bytes > ctx.linger_max_bytes:
            self._close_transport()
            return
        self._idle_deadline = min(self.loop.time() + ctx.linger_timeout, self._linger_end)

    def _parse_failed(self, exc: GatewayError) -> None:
        """A request could not be parsed: answer it in turn, then close."""
        if self.closed:
            return  # the bytes came after the connection's last answer
        self.pause_reading()
        self._parsing_stopped = True  # llhttp stays in its error state: never fed again
        self._in_head = False
        if self.current is not None and self.current in self.queue:
            ex = self.current  # failure inside a body: its own handler sees the error
            ex.keep_alive = False
            if ex.preset_error is None and ex.body_error is None:
                ex.fail_body(exc)
            self.current = None
            return
        head = RequestHead(
            "GET", "/", "", [], b"1.1", None, wire.request_id(None), frozenset(), False
        )
        ex = Exchange(self, head, False, exc)
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._start(ex)

    async def wait_body(self, ex: Exchange) -> None:
        if ex.body_complete or ex.body_error is not None or self.closed:
            return
        fut = self.loop.create_future()
        self._body_waiters[ex] = fut
        ex.want_whole_body()
        self.resume_reading()
        await fut

    def wake_body_waiter(self, ex: Exchange) -> None:
        fut = self._body_waiters.pop(ex, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def start_tunnel(self, upstream: asyncio.Transport, ex: Exchange) -> None:
        self.tunnel = upstream
        if ex.upgrade_data:
            upstream.write(ex.upgrade_data)
            ex.upgrade_data = b""
        self.resume_reading()  # paused when the Upgrade head was parsed


def make_protocol_factory(ctx: ServerContext) -> Callable[[], HttpServerProtocol]:
    def factory() -> HttpServerProtocol:
        return HttpServerProtocol(ctx)

    return factory


def _has_body(scan: HeadScan) -> bool:
    """Whether the head announces a body (chunked, or a Content-Length above 0)."""
    cl = scan.cl
    return scan.te_count > 0 or (cl is not None and cl.isdigit() and int(cl) > 0)
