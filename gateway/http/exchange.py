"""One request/response exchange on a client connection: the request head as parsed (a
`RequestHead` value), its body stream (buffered until a sink is attached, then relayed with
backpressure) and the answer, framed by `gateway/http/framing.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from gateway.errors import BadHttpRequestError, GatewayError, PayloadTooLargeError
from gateway.http import framing, wire

if TYPE_CHECKING:
    from gateway.extract import KnownBearer
    from gateway.routing import Route
    from gateway.tracecontext import RequestTrace

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
_BUFFER_HIGH: Final = (
    256 * 1024
)  # request body buffered before a sink exists: pause the client past it


# What an exchange, and the stages above it, may know and ask of the client connection: the
# narrow interface the HTTP/1.1 server protocol implements (plain TCP today, TLS next, an HTTP/2
# stream later). Who the client is (`client_ip`, `scheme`, the verified TLS client certificate),
# a slot the authenticate stage keeps per connection, and the few things an exchange asks of it.
class ClientConnection(asyncio.Protocol):
    """One client connection, as the request path sees it."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme  # what the client used: "http", or "https" on a TLS listener
        self.client_ip = ""
        #: the verified client certificate (DER) on a TLS listener that asks for one
        self.peer_certificate: bytes | None = None
        #: its `X-Forwarded-Client-Cert` element, rendered once per connection by the forward
        #: stage (gateway/upstream_headers.py; opaque here)
        self.forwarded_cert: bytes | None = None
        #: The authenticate stage's memo for this connection (opaque here): the last
        #: Authorization value, its token and digest, so that a keep-alive client resending it
        #: is neither parsed nor hashed again.
        self.token_memo: KnownBearer | None = None
        #: no more requests are read, started or answered (closing, lingering, or gone)
        self.closed = False

    @property
    def realm(self) -> str:
        """The realm of this listener's challenges."""
        raise NotImplementedError

    @property
    def write_paused(self) -> bool:
        """Whether the client reads slower than the answer comes (producers pause)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def writelines(self, data: tuple[bytes, ...]) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close once what was written is sent."""
        raise NotImplementedError

    def abort(self) -> None:
        """Cut the connection now."""
        raise NotImplementedError

    async def wait_body(self, ex: Exchange) -> None:
        """Until the exchange's whole request body has arrived (or failed, or the client left)."""
        raise NotImplementedError

    def wake_body_waiter(self, ex: Exchange) -> None:
        """The body of `ex` will not grow any more: release a wait_body()."""
        raise NotImplementedError

    def start_tunnel(self, upstream: asyncio.Transport, ex: Exchange) -> None:
        """After `101`: bytes flow both ways untouched between the client and `upstream`."""
        raise NotImplementedError

    def exchange_ended(self, ex: Exchange) -> None:
        """`ex` is over (answered, aborted or abandoned): it leaves the in-flight count."""
        raise NotImplementedError

    def exchange_finished(self, ex: Exchange) -> None:
        """The answer to `ex` is complete: the connection moves to its next request or closes."""
        raise NotImplementedError


class BodySink(Protocol):
    """Where a request body goes (an upstream connection)."""

    def write_body(self, data: bytes) -> None: ...
    def end_body(self) -> None: ...
    def abort_body(self, exc: GatewayError) -> None: ...


class Producer(Protocol):
    """Who feeds the response (an upstream connection); paused when the client reads slowly."""

    def pause_producing(self) -> None: ...
    def resume_producing(self) -> None: ...


class RequestHead:
    """A request head as the server parsed and checked it: what the stages read.

    `path` is the raw path until the pipeline normalises it (the upstream gets the normalised
    one); forward-auth rewrites method, path, query and host into the request a front proxy
    describes. Header names are lower-case, values as received."""

    __slots__ = (
        "conn_tokens",
        "headers",
        "host",
        "method",
        "path",
        "query",
        "request_id",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        version: bytes,
        host: str | None,
        request_id: str,
        conn_tokens: frozenset[bytes],
        upgrade: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.version = version
        self.host = host
        self.request_id = request_id
        self.conn_tokens = conn_tokens  # header names listed in Connection (this hop only)
        self.upgrade = upgrade  # a WebSocket upgrade to relay

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (name lower-case)."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Exchange:
    """A request as the server parsed it, and the writer of its answer."""

    __slots__ = (
        "_body_chunks",
        "_body_exc",
        "_buffered",
        "_chunked_out",
        "_no_body_out",
        "_out",
        "_sink",
        "_whole_body",
        "answer_headers",
        "body_complete",
        "body_limit",
        "body_mode",
        "body_received",
        "bytes_sent",
        "challenge",
        "client_ip",
        "conn",
        "content_length",
        "ended",
        "error",
        "expect_continue",
        "finished",
        "head",
        "keep_alive",
        "on_end",
        "on_gone",
        "preset_error",
        "private_cache",
        "producer",
        "response_started",
        "route",
        "started",
        "started_at",
        "status",
        "trace",
        "trace_line",
        "upgrade_data",
    )

    def __init__(
        self,
        conn: ClientConnection,
        head: RequestHead,
        keep_alive: bool,
        preset_error: GatewayError | None,
    ) -> None:
        self.conn = conn
        self.head = head
        self.keep_alive = keep_alive
        #: a framing or limit error found while parsing: answered instead of the request
        self.preset_error = preset_error
        self.client_ip = conn.client_ip
        self.started_at = time.monotonic()
        self.started = False  # handed to the handler (counted in flight)
        self.body_mode = BODY_NONE
        self.content_length = 0
        self.body_received = 0
        self.body_complete = True
        self.body_limit = -1  # unknown until the route is matched
        self.expect_continue = False
        self.upgrade_data = b""
        self.private_cache = False
        #: the route's WWW-Authenticate shape (resource_metadata, DPoP), set by the
        #: authenticate stage; None: RFC 6750's plain Bearer challenge
        self.challenge: wire.Challenge | None = None
        #: header lines the gateway adds to every answer to this request, relayed or its own
        #: (`DPoP-Nonce`, `RateLimit`); "" for none
        self.answer_headers = ""
        self.on_gone: Callable[[], object] | None = None  # stops work when the client leaves
        self.on_end: Callable[[Exchange], None] | None = None  # metrics and access log
        self.route: Route | None = None
        self.trace: RequestTrace | None = None  # W3C trace context (gateway/tracecontext.py)
        #: a new trace that is not recorded (`tracing:`, no incoming context): only the
        #: `traceparent` line the upstream receives (RequestTracer.quiet_line); "" otherwise
        self.trace_line = ""
        self.error: GatewayError | None = None
        self.ended = False
        self._out: list[bytes] = []
        self.producer: Producer | None = None
        self.response_started = False
        self.finished = False
        self.status = 0
        self.bytes_sent = 0
        self._body_chunks: list[bytes] = []
        self._buffered = 0
        self._sink: BodySink | None = None
        self._whole_body = False  # a handler awaits the complete body (bounded by body_limit)
        self._body_exc: GatewayError | None = None
        self._chunked_out = False
        self._no_body_out = False

    # ----------------------------------------------------------------- request side
    def set_body_limit(self, limit: int) -> None:
        """The route's max_body; raises PayloadTooLargeError when already exceeded."""
        self.body_limit = limit
        if self.body_mode == BODY_LENGTH and self.content_length > limit:
            raise PayloadTooLargeError("content_length_over_limit")
        if self.body_received > limit:
            raise PayloadTooLargeError("body_over_limit")

    def feed_body(self, data: bytes) -> None:
        """Called by the parser for each body piece."""
        self.body_received += len(data)
        if 0 <= self.body_limit < self.body_received:
            self._fail_body(PayloadTooLargeError("body_over_limit"))
            return
        if self._body_exc is not None:
            return
        if self._sink is not None:
            self._sink.write_body(data)
            return
        self._body_chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _BUFFER_HIGH and not self._whole_body:
            self.conn.pause_reading()

    def end_of_body(self) -> None:
        self.body_complete = True
        if self._sink is not None and self._body_exc is None:
            self._sink.end_body()

    def _fail_body(self, exc: GatewayError) -> None:
        if self._body_exc is not None:
            return
        self._body_exc = exc
        self._body_chunks.clear()
        self.keep_alive = False
        if self._sink is not None:
            self._sink.abort_body(exc)
        elif not self.response_started:
            # the handler may be waiting on the body (form token): let it answer 413
            self.conn.wake_body_waiter(self)

    def fail_body(self, exc: GatewayError) -> None:
        """The request body is broken (framing, limits): the answer says so, the connection
        closes after it."""
        self.keep_alive = False
        self._fail_body(exc)

    async def wait_body(self) -> None:
        """Until the whole body has arrived, buffered (bounded by the route's max_body)."""
        await self.conn.wait_body(self)

    @property
    def body_error(self) -> GatewayError | None:
        return self._body_exc

    def attach_sink(self, sink: BodySink) -> None:
        """Relay the buffered body, then every later piece, to the sink."""
        self._sink = sink
        if self._body_exc is not None:
            sink.abort_body(self._body_exc)
            return
        chunks, self._body_chunks, self._buffered = self._body_chunks, [], 0
        for chunk in chunks:
            sink.write_body(chunk)
        if self.body_complete and self.body_mode != BODY_NONE:
            sink.end_body()
        self.conn.resume_reading()

    def want_whole_body(self) -> None:
        """Buffer the body to its end without pausing the client (max_body bounds it)."""
        self._whole_body = True

    def detach_sink(self, sink: BodySink) -> None:
        """The sink is done with this exchange: body bytes still to come are dropped (the
        answer has been given; the client connection closes after it)."""
        if self._sink is sink:
            self._sink = None
            if not self.body_complete and self._body_exc is None:
                self._body_exc = BadHttpRequestError("body_after_answer")

    def take_buffered_body(self) -> bytes:
        """The whole body when it is complete and buffered (form-token extraction)."""
        return b"".join(self._body_chunks)

    def replace_body(self, body: bytes) -> None:
        """Swap the buffered (complete) body, e.g. after removing a form token."""
        self._body_chunks = [body] if body else []
        self._buffered = len(body)
        self.body_mode = BODY_LENGTH if body else BODY_NONE
        self.content_length = len(body)

    def pause_reading(self) -> None:
        self.conn.pause_reading()

    def resume_reading(self) -> None:
        self.conn.resume_reading()

    def send_continue(self) -> None:
        """`100 Continue`, sent only once the request is allowed through."""
        if self.expect_continue and not self.response_started:
            self.expect_continue = False
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # ---------------------------------------------------------------- response side
    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        no_body: bool = False,
    ) -> None:
        """Write the status line and headers; framing follows `length` (None = streamed)."""
        self.response_started = True
        self.status = status
        self._no_body_out = no_body
        if not self.body_complete or self._body_exc is not None:
            self.keep_alive = False  # an unread request body cannot be skipped safely
        head = self.head
        version = head.version
        streamed = length is None and not no_body and status != 204 and status != 304
        chunked = streamed and version == b"1.1"
        if streamed and not chunked:
            self.keep_alive = False  # HTTP/1.0 without a length: the close delimits the body
        self._chunked_out = chunked
        self._out.append(
            framing.response_head(
                status,
                headers,
                version,
                length,
                chunked,
                self.keep_alive,
                head.request_id,
                self.private_cache,
                self.answer_headers,
            )
        )

    def write(self, data: bytes) -> None:
        """Queue body bytes; they leave with the head in one write at flush() or finish()."""
        if self._no_body_out or not data:
            return
        self.bytes_sent += len(data)
        if self._chunked_out:
            self._out += framing.chunk(data)
        else:
            self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        if len(out) == 1:
            self.conn.write(out[0])
        elif len(out) < 8:
            self.conn.write(b"".join(out))
        else:
            self.conn.writelines(tuple(out))

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._chunked_out:
            self._out.append(framing.LAST_CHUNK)
        self.flush()
        self.end()
        self.conn.exchange_finished(self)

    def end(self) -> None:
        """The exchange is over (answered, aborted, or its client left): counted once."""
        if self.ended:
            return
        self.ended = True
        self.on_gone = None
        self.conn.exchange_ended(self)
        if self.on_end is not None:
            self.on_end(self)

    def fail(self, exc: GatewayError) -> None:
        """Answer exc (SPEC section 4), or drop the connection if the answer has begun."""
        if self.ended:
            return
        if self.error is None:
            self.error = exc
        self.send_error(exc, self.conn.realm)

    def client_gone(self) -> None:
        """The client connection closed: stop the work and end the exchange."""
        if self.ended:
            return
        on_gone, self.on_gone = self.on_gone, None
        if on_gone is not None:
            on_gone()
        self.finished = True
        self.end()

    def respond(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, no_body: bool = False
    ) -> None:
        """A complete answer produced by the gateway itself."""
        self.start_response(
            status, headers, len(body), no_body=no_body or self.head.method == "HEAD"
        )
        self.write(body)
        self.finish()

    def send_error(self, exc: GatewayError, realm: str) -> None:
        """The SPEC section 4 answer for exc, or a dropped connection once the answer has begun."""
        if self.response_started:
            self.abort()
            return
        if isinstance(exc, BadHttpRequestError) or exc.status in (413, 414, 431):
            self.keep_alive = False  # the rest of the stream cannot be trusted
        self.respond(
            exc.status, wire.error_headers(exc, realm, self.challenge), wire.error_body(exc)
        )

    def abort(self) -> None:
        """Cut the client connection (the answer cannot be completed)."""
        self.keep_alive = False
        self.finished = True
        self._out.clear()
        on_gone, self.on_gone = self.on_gone, None
        if on_gone is not None:
            on_gone()
        self.end()
        self.conn.abort()

    def switch_protocols(
        self, headers: list[tuple[bytes, bytes]], rest: bytes, upstream: asyncio.Transport
    ) -> ClientConnection:
        """The upstream answered `101`: relay that answer, then tunnel bytes both ways; the
        exchange is over. Returns the client side of the tunnel."""
        self.response_started = True
        self.status = 101
        conn = self.conn
        conn.write(framing.switching_head(headers, self.head.request_id))
        if rest:
            conn.write(rest)
        self.finished = True
        conn.start_tunnel(upstream, self)
        self.end()
        return conn
