"""The spans of sampled requests as the data path records them: plain records (`SpanRecord`),
a bounded queue the export thread empties (`SpanQueue`), and the `tracecontext.Recording` of one
request (`SpanRecording`). Compiled with mypyc; gateway/tracing.py (the export thread and the
OpenTelemetry SDK's exporter) builds the queue, gateway/otlp.py encodes the records.

A sampled request costs a few requests' worth here: no SDK object, context, lock or processor;
names, ids as hex, start and end in ns, an attribute dict. A record that finds the queue full is
dropped at once (never waited for) and counted. No attribute ever holds a token, a proof, a
secret or a header value other than Host.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from gateway.authn.info import TokenInfo
from gateway.tracecontext import SCOPE, ChildSpan, RequestTrace, error_type

#: Called with (reason, count) for spans that will never reach the collector.
DropCounter = Callable[[str, int], None]

#: span kinds as OTLP numbers them (SpanKind.SPAN_KIND_*)
KIND_INTERNAL: Final = 1
KIND_SERVER: Final = 2
KIND_CLIENT: Final = 3

_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_ID_CHARS: Final = 16 * 256  # hex digits of span ids minted at once
_ZERO_ID: Final = "0" * 16
_now: Final = time.time_ns


class SpanRecord:
    """One span as the data path records it: plain values only. The server span's parent is
    the caller's (remote) span when the request came with a context; every other span's parent
    is one of the gateway's."""

    __slots__ = (
        "attributes",
        "end",
        "error",
        "kind",
        "name",
        "parent",
        "span_id",
        "start",
        "trace",
    )

    def __init__(
        self,
        trace: RequestTrace,
        name: str,
        kind: int,
        span_id: str,
        parent: str | None,
        attributes: dict[str, str | int],
        start: int,
    ) -> None:
        self.trace = trace  # trace-id, tracestate, and the caller's span for the server span
        self.name = name
        self.kind = kind  # KIND_*
        self.span_id = span_id  # 16 hex digits
        self.parent = parent  # 16 hex digits, None for the root of a new trace
        self.attributes = attributes
        self.start = start  # time.time_ns()
        self.end = start
        self.error = False  # the span's status is ERROR

    @property
    def remote_parent(self) -> bool:
        """The parent is the caller's span (only a server span's can be)."""
        return self.kind == KIND_SERVER and self.parent is not None


class SpanQueue:
    """The ended spans waiting for export (appended here, taken by the export thread), and
    the start of a sampled request's recording (`tracecontext.Recorder.start`)."""

    def __init__(
        self, max_queue_size: int, batch_size: int, dropped: DropCounter, wake: threading.Event
    ) -> None:
        self.max_queue_size = max_queue_size
        self.batch_size = batch_size
        self.dropped = dropped
        self.wake = wake  # set when a batch is full: the export thread goes at once
        self.queue: deque[SpanRecord] = deque()
        self.open = True  # False once closing: later spans are not queued (nor counted)
        self._ids = ""  # random hex: 16 digits per span id
        self._next_id = _ID_CHARS

    def start(
        self, trace: RequestTrace, method: str, path: str, host: str | None, scheme: str
    ) -> SpanRecording:
        """The server span of a sampled request: a child of the incoming context, or the root
        of the new trace the data path started (its span-id, minted with the trace-id, is the
        server span's)."""
        known = method in _METHODS
        attributes: dict[str, str | int] = {
            "http.request.method": method if known else "_OTHER",
            "url.path": path if len(path) <= 2048 else path[:2048],
            "url.scheme": scheme,
        }
        if not known:
            attributes["http.request.method_original"] = method
        if host:
            address, port = _split_host(host)
            attributes["server.address"] = address
            if port:
                attributes["server.port"] = port
        name = method if known else "HTTP"
        if trace.remote:  # a new span-id, the caller's span as parent
            span_id, parent = self.span_id(), trace.parent_id
        else:
            span_id, parent = trace.parent_id, None
        server = SpanRecord(trace, name, KIND_SERVER, span_id, parent, attributes, _now())
        return SpanRecording(self, server)

    def span_id(self) -> str:
        """A new span-id (16 hex digits) from a block of random hex (one `os.urandom` per 256)."""
        at = self._next_id
        if at >= _ID_CHARS:
            self._ids = os.urandom(_ID_CHARS // 2).hex()
            at = 0
        self._next_id = at + 16
        span_id = self._ids[at : at + 16]
        return span_id if span_id != _ZERO_ID else self.span_id()

    def push(self, span: SpanRecord) -> None:
        """Queue an ended span for export, or drop it (counted) when the queue is full; once
        closing, a span is neither queued nor counted."""
        queue = self.queue
        if len(queue) < self.max_queue_size:
            if self.open:
                queue.append(span)
                if len(queue) >= self.batch_size and not self.wake.is_set():
                    self.wake.set()  # a full batch: export now
        elif self.open:
            self.dropped("queue_full", 1)


def _split_host(host: str) -> tuple[str, int]:
    """`server.address` and `server.port` of a Host header (port 0 when absent)."""
    address, sep, port = host.rpartition(":")
    if not sep or "]" in port or not port.isdigit():
        return host.strip("[]"), 0
    return address.strip("[]"), int(port)


class SpanRecording:
    """The spans of one sampled request (`tracecontext.Recording`)."""

    __slots__ = ("_client", "_recorder", "_server")

    def __init__(self, recorder: SpanQueue, server: SpanRecord) -> None:
        self._recorder = recorder
        self._server = server
        self._client: SpanRecord | None = None

    def cache_hit(self, info: TokenInfo) -> None:
        # the token lookup's span: the in-process cache answered (a dictionary lookup, under a
        # microsecond: the span marks the moment)
        recorder, server = self._recorder, self._server
        attributes: dict[str, str | int] = {
            "gateway.cache": "hit",
            "gateway.token_source": info.source,
        }
        span = SpanRecord(
            server.trace, "token lookup", KIND_INTERNAL, recorder.span_id(), server.span_id,
            attributes, _now(),
        )  # fmt: skip
        recorder.push(span)
        self._identified(info)

    async def lookup(self, pending: Awaitable[TokenInfo]) -> TokenInfo:
        recorder, server = self._recorder, self._server
        span = SpanRecord(
            server.trace, "token lookup", KIND_INTERNAL, recorder.span_id(), server.span_id,
            {"gateway.cache": "miss"}, _now(),
        )  # fmt: skip
        token = SCOPE.set(_Scope(recorder, span))
        try:
            info = await pending
        except BaseException as exc:
            _fail(span, error_type(exc))
            span.end = _now()
            recorder.push(span)
            raise
        finally:
            SCOPE.reset(token)
        span.attributes["gateway.token_source"] = info.source
        span.end = _now()
        recorder.push(span)
        self._identified(info)
        return info

    def _identified(self, info: TokenInfo) -> None:
        attributes = self._server.attributes
        attributes["gateway.grant"] = info.grant
        if info.client_id is not None:
            attributes["gateway.client_id"] = info.client_id

    def upstream(self, method: str, upstream: str, address: str | None, port: int) -> str:
        recorder, server = self._recorder, self._server
        attributes: dict[str, str | int] = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "gateway.upstream": upstream,
        }
        if address is not None:
            attributes["server.address"] = address
            attributes["server.port"] = port
        span_id = recorder.span_id()
        trace = server.trace
        self._client = SpanRecord(
            trace, server.name, KIND_CLIENT, span_id, server.span_id, attributes, _now()
        )
        # version 00, sampled: the request is recorded
        return f"00-{trace.trace_id}-{span_id}-01"

    def end(self, status: int, reason: str | None, template: str | None) -> None:
        recorder = self._recorder
        now = _now()
        client = self._client
        if client is not None:
            if reason is not None:  # the gateway answered: the upstream's answer did not come
                _fail(client, reason)
            else:
                client.attributes["http.response.status_code"] = status
                if status >= 400:
                    _fail(client, str(status))
            client.end = now
            recorder.push(client)
        server = self._server
        attributes = server.attributes
        attributes["http.response.status_code"] = status
        if template is not None:  # the route's name is not repeated: its template names it
            attributes["http.route"] = template
            server.name = f"{server.name} {template}"
        if reason is not None:
            attributes["gateway.reason"] = reason
        if status >= 500:
            _fail(server, reason or str(status))
        server.end = now
        recorder.push(server)


def _fail(span: SpanRecord, error: str) -> None:
    span.attributes["error.type"] = error
    span.error = True


class _Scope:
    """A token lookup in progress (`tracecontext.SpanScope`): the calls it makes are its
    children; the validator notes where the answer came from."""

    __slots__ = ("recorder", "span")

    def __init__(self, recorder: SpanQueue, span: SpanRecord) -> None:
        self.recorder = recorder
        self.span = span

    def child(self, name: str, attributes: dict[str, str | int]) -> ChildSpan:
        parent = self.span
        span = SpanRecord(
            parent.trace, name, KIND_CLIENT, self.recorder.span_id(), parent.span_id,
            dict(attributes), _now(),
        )  # fmt: skip
        return _Child(self.recorder, span)

    def note(self, key: str, value: str) -> None:
        self.span.attributes[key] = value


class _Child:
    """One IdP, JWKS or Redis call (`tracecontext.ChildSpan`)."""

    __slots__ = ("recorder", "span")

    def __init__(self, recorder: SpanQueue, span: SpanRecord) -> None:
        self.recorder = recorder
        self.span = span

    def set(self, key: str, value: str | int) -> None:
        self.span.attributes[key] = value

    def end(self, error: str | None) -> None:
        span = self.span
        if error is not None:
            _fail(span, error)
        span.end = _now()
        self.recorder.push(span)
