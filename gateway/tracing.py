"""The spans of sampled requests, exported over OTLP/HTTP with the OpenTelemetry SDK's exporter.

Built only when `tracing.otlp_endpoint` is set (the SDK is imported then, not before). The data
path decides sampling itself (gateway/tracecontext.py) and calls in here for sampled requests
only: a server span per request, a child for the token lookup (an answer from the in-process
cache too, with `gateway.cache: hit`; a lookup that does work has, through the context variable
`tracecontext.SCOPE`, a client span for each IdP, JWKS or Redis call it makes), and a client
span for the upstream exchange, whose id the upstream receives as parent.

On the data path a span is a plain record (`_Span`: names, ids as hex, start and end in ns,
an attribute dict, kind, error): no SDK object, context, lock or processor, so a sampled
request costs a few requests' worth rather than tens. The records go to a bounded queue; one
export thread turns them into the SDK's `ReadableSpan`s in batches and hands them to the SDK's
`OTLPSpanExporter`, which does the OTLP encoding and the HTTP. A record that finds the queue
full is dropped at once (never waited for), and so is a batch the collector did not take (down,
hanging past `export_timeout`, refusing); both are counted in `gateway_spans_dropped_total`.
No attribute ever holds a token, a proof, a secret or a header value other than Host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import OTEL_BSP_SCHEDULE_DELAY
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway import __version__
from gateway.authn.info import TokenInfo
from gateway.config.models import TracingConfig
from gateway.tracecontext import SCOPE, ChildSpan, RequestTrace, error_type

log = structlog.get_logger("gateway")

#: Called with (reason, count) for spans that will never reach the collector.
DropCounter = Callable[[str, int], None]

_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_EXPORT_BATCH: Final = 512
_CLOSE_WAIT: Final = 5.0
_SCHEDULE_DELAY_MS: Final = 5000  # between exports unless a batch fills (OTEL_BSP_SCHEDULE_DELAY)
_ID_CHARS: Final = 16 * 256  # hex digits of span ids minted at once
_ZERO_ID: Final = "0" * 16
# The SDK's own export-failure and retry warnings repeat for every batch; ours say it once.
_QUIET_LOGGERS: Final = ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal")
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_OK: Final = Status(StatusCode.UNSET)
_ERROR: Final = Status(StatusCode.ERROR)
_SERVER: Final = SpanKind.SERVER
_CLIENT: Final = SpanKind.CLIENT
_INTERNAL: Final = SpanKind.INTERNAL
_now = time.time_ns


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (`/v1/traces` added unless there)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class _Span:
    """One span as the data path records it: plain values only. The export thread makes the
    SDK's `ReadableSpan` of it. The server span's parent is the caller's (remote) span when the
    request came with a context; every other span's parent is one of the gateway's."""

    __slots__ = (
        "attributes", "end", "error", "kind", "name", "parent", "span_id", "start", "trace",
    )  # fmt: skip

    def __init__(
        self,
        trace: RequestTrace,
        name: str,
        kind: SpanKind,
        span_id: str,
        parent: str | None,
        attributes: dict[str, str | int],
        start: int,
    ) -> None:
        self.trace = trace  # trace-id, tracestate, and the caller's span for the server span
        self.name = name
        self.kind = kind
        self.span_id = span_id  # 16 hex digits
        self.parent = parent  # 16 hex digits, None for the root of a new trace
        self.attributes = attributes
        self.start = start  # time.time_ns()
        self.end = start
        self.error = False  # the span's status is ERROR


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it lost and logging the first failure of an episode."""

    def __init__(self, inner: SpanExporter, dropped: DropCounter, endpoint: str) -> None:
        self.inner = inner
        self.dropped = dropped
        self.endpoint = endpoint
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # the export thread must go on; count the batch as lost
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self.failing:
                self.failing = False
                log.info("span_export_recovered", endpoint=self.endpoint)
        else:
            self.dropped("export_failed", len(spans))
            if not self.failing:
                self.failing = True
                log.warning("span_export_failed", endpoint=self.endpoint, spans=len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _Resource(Resource):
    """The service's resource, hashed once: the SDK's encoder groups every span by resource,
    and `Resource.__hash__` serialises the attributes to JSON each time."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or super().__eq__(other)


def _schedule_delay() -> float:
    """Seconds between exports of a queue that did not fill a batch (the SDK's variable)."""
    try:
        return max(int(os.environ.get(OTEL_BSP_SCHEDULE_DELAY, _SCHEDULE_DELAY_MS)), 1) / 1000
    except ValueError:
        return _SCHEDULE_DELAY_MS / 1000


class SpanRecorder:
    """The span records' bounded queue and the thread exporting them (with the SDK's OTLP/HTTP
    exporter) for one `tracing:` config; starts the recording of a sampled request
    (`tracecontext.Recorder`)."""

    def __init__(self, cfg: TracingConfig, dropped: DropCounter) -> None:
        assert cfg.otlp_endpoint is not None
        self.cfg = cfg
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.bound = TraceIdRatioBased.get_bound_for_rate(cfg.sample_ratio)
        self.resource = _Resource(
            Resource.create({"service.name": cfg.service_name, "service.version": __version__})
        )
        self.scope = InstrumentationScope("oauth-gateway", __version__)
        url = traces_url(cfg.otlp_endpoint)
        self.exporter = _CountingExporter(
            OTLPSpanExporter(endpoint=url, timeout=cfg.export_timeout), dropped, url
        )
        self.dropped = dropped
        self.max_queue_size = cfg.max_queue_size
        self.batch_size = min(_EXPORT_BATCH, cfg.max_queue_size)
        self.queue: deque[_Span] = deque()  # appended by the data path, taken by the thread
        self.open = True  # False once closing: later spans are not queued (nor counted)
        self._ids = ""  # random hex: 16 digits per span id
        self._next_id = _ID_CHARS
        self._wake = threading.Event()
        self._flushes: deque[threading.Event] = deque()  # flush() calls waiting
        self._delay = _schedule_delay()
        self._stopped: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-span-export", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- the data path's side
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
        server = _Span(trace, name, _SERVER, span_id, parent, attributes, _now())
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

    def push(self, span: _Span) -> None:
        """Queue an ended span for export, or drop it (counted) when the queue is full; once
        closing, a span is neither queued nor counted."""
        queue = self.queue
        if len(queue) < self.max_queue_size:
            if self.open:
                queue.append(span)
                if len(queue) >= self.batch_size and not self._wake.is_set():
                    self._wake.set()  # a full batch: export now
        elif self.open:
            self.dropped("queue_full", 1)

    # -------------------------------------------------------------- the export thread
    def _run(self) -> None:
        wake, queue = self._wake, self.queue
        while True:
            wake.wait(self._delay)
            wake.clear()
            flushes = [self._flushes.popleft() for _ in range(len(self._flushes))]
            stopping = self._stopped is not None
            while queue:
                count = min(len(queue), self.batch_size)
                batch = [self._readable(queue.popleft()) for _ in range(count)]
                self.exporter.export(batch)
            for flushed in flushes:
                flushed.set()
            if stopping:
                break
        try:
            self.exporter.shutdown()
        finally:
            stopped = self._stopped
            if stopped is not None:
                stopped()

    def _readable(self, span: _Span) -> ReadableSpan:
        """The SDK's span of a record (in the export thread only)."""
        trace = span.trace
        trace_id = int(trace.trace_id, 16)
        state = _trace_state(trace.tracestate)
        parent = None
        if span.parent is not None:
            remote = span.kind is _SERVER  # only the server span has the caller's as parent
            parent = SpanContext(
                trace_id,
                int(span.parent, 16),
                is_remote=remote,
                trace_flags=TraceFlags(trace.flags) if remote else _SAMPLED,
                trace_state=state,
            )
        return ReadableSpan(
            name=span.name,
            context=SpanContext(
                trace_id, int(span.span_id, 16), False, trace_flags=_SAMPLED, trace_state=state
            ),
            parent=parent,
            resource=self.resource,
            attributes=span.attributes,
            kind=span.kind,
            status=_ERROR if span.error else _OK,
            start_time=span.start,
            end_time=span.end,
            instrumentation_scope=self.scope,
        )

    def flush(self, timeout: float) -> bool:
        """Export what is queued now; blocks until done or `timeout` (bench and tests)."""
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout)

    async def close(self) -> None:
        """Export what is queued (waiting `export_timeout`, at most 5 s), then stop; a
        collector that does not answer is given up on (its spans are lost), not waited for."""
        timeout = min(self.cfg.export_timeout, _CLOSE_WAIT)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def stopped() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_set_done, done)

        self.open = False
        self._stopped = stopped
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            self.exporter.inner.shutdown()  # abandon the retries of the export in progress
            log.warning("span_export_abandoned", endpoint=self.exporter.endpoint)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _trace_state(raw: bytes | None) -> TraceState | None:
    if raw is None:
        return None
    return TraceState.from_header([raw.decode("ascii", "replace")])


def _split_host(host: str) -> tuple[str, int]:
    """`server.address` and `server.port` of a Host header (port 0 when absent)."""
    address, sep, port = host.rpartition(":")
    if not sep or "]" in port or not port.isdigit():
        return host.strip("[]"), 0
    return address.strip("[]"), int(port)


class SpanRecording:
    """The spans of one sampled request (`tracecontext.Recording`)."""

    __slots__ = ("_client", "_recorder", "_server")

    def __init__(self, recorder: SpanRecorder, server: _Span) -> None:
        self._recorder = recorder
        self._server = server
        self._client: _Span | None = None

    def cache_hit(self, info: TokenInfo) -> None:
        # the token lookup's span: the in-process cache answered (a dictionary lookup, under a
        # microsecond: the span marks the moment)
        recorder, server = self._recorder, self._server
        attributes: dict[str, str | int] = {
            "gateway.cache": "hit",
            "gateway.token_source": info.source,
        }
        span = _Span(
            server.trace, "token lookup", _INTERNAL, recorder.span_id(), server.span_id,
            attributes, _now(),
        )  # fmt: skip
        recorder.push(span)
        self._identified(info)

    async def lookup(self, pending: Awaitable[TokenInfo]) -> TokenInfo:
        recorder, server = self._recorder, self._server
        span = _Span(
            server.trace, "token lookup", _INTERNAL, recorder.span_id(), server.span_id,
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
        self._client = _Span(
            trace, server.name, _CLIENT, span_id, server.span_id, attributes, _now()
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


def _fail(span: _Span, error: str) -> None:
    span.attributes["error.type"] = error
    span.error = True


class _Scope:
    """A token lookup in progress (`tracecontext.SpanScope`): the calls it makes are its
    children; the validator notes where the answer came from."""

    __slots__ = ("recorder", "span")

    def __init__(self, recorder: SpanRecorder, span: _Span) -> None:
        self.recorder = recorder
        self.span = span

    def child(self, name: str, attributes: dict[str, str | int]) -> ChildSpan:
        parent = self.span
        span = _Span(
            parent.trace, name, _CLIENT, self.recorder.span_id(), parent.span_id,
            dict(attributes), _now(),
        )  # fmt: skip
        return _Child(self.recorder, span)

    def note(self, key: str, value: str) -> None:
        self.span.attributes[key] = value


class _Child:
    """One IdP, JWKS or Redis call (`tracecontext.ChildSpan`)."""

    __slots__ = ("recorder", "span")

    def __init__(self, recorder: SpanRecorder, span: _Span) -> None:
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
