"""The spans of sampled requests, made with the OpenTelemetry SDK and exported over OTLP/HTTP.

Built only when `tracing.otlp_endpoint` is set (the SDK is imported then, not before). The data
path decides sampling itself (gateway/tracecontext.py) and calls in here for sampled requests
only: a server span per request, a child for a token lookup that does work (and, through the
context variable `tracecontext.SCOPE`, a client span for each IdP, JWKS or Redis call it
makes; an answer from the in-process cache is an attribute of the server span), and a client
span for the upstream exchange, whose id the upstream receives as parent.

Export runs in the SDK's BatchSpanProcessor thread. Its queue is bounded, and a span that finds
it full is dropped at once (never waited for); so is a batch the collector did not take (down,
hanging past `export_timeout`, refusing). Both are counted in `gateway_spans_dropped_total`:
the SDK has no public hook for either, so the processor and the exporter are wrapped here.
No attribute ever holds a token, a proof, a secret or a header value other than Host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

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
# The SDK's own export-failure and retry warnings repeat for every batch; ours say it once.
_QUIET_LOGGERS: Final = ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal")


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (`/v1/traces` added unless there)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class _PresetIds(RandomIdGenerator):
    """Lets a new trace keep the trace-id the data path chose (and sampled by): the next root
    span takes `next_trace_id` once; everything else is random as usual. The data path runs on
    one thread, and sets the id just before starting that span."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        preset, self.next_trace_id = self.next_trace_id, 0
        return preset or super().generate_trace_id()


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it was handed (for the queue bound) and what it lost."""

    def __init__(self, inner: SpanExporter, dropped: DropCounter, endpoint: str) -> None:
        self.inner = inner
        self.dropped = dropped
        self.endpoint = endpoint
        self.handed = 0  # written by the export thread only
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.handed += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception:  # the SDK's thread would log and go on; count it as lost
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


class _BoundedProcessor(SpanProcessor):
    """BatchSpanProcessor behind a count of the spans it holds: one that would overflow its
    queue is dropped here and counted (the SDK would drop the oldest one, uncounted)."""

    def __init__(
        self, exporter: _CountingExporter, max_queue_size: int, dropped: DropCounter
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.dropped = dropped
        self.accepted = 0  # written by the data path's thread only
        self.batch = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue_size,
            max_export_batch_size=min(_EXPORT_BATCH, max_queue_size),
        )

    def on_end(self, span: ReadableSpan) -> None:
        if self.accepted - self.exporter.handed >= self.max_queue_size:
            self.dropped("queue_full", 1)
            return
        self.accepted += 1
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self.batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


class SpanRecorder:
    """The SDK's provider, sampler, exporter and batch processor for one `tracing:` config;
    starts the recording of a sampled request (`tracecontext.Recorder`)."""

    def __init__(self, cfg: TracingConfig, dropped: DropCounter) -> None:
        assert cfg.otlp_endpoint is not None
        self.cfg = cfg
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.ids = _PresetIds()
        self.bound = TraceIdRatioBased.get_bound_for_rate(cfg.sample_ratio)
        resource = Resource.create(
            {"service.name": cfg.service_name, "service.version": __version__}
        )
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
            resource=resource,
            id_generator=self.ids,
            shutdown_on_exit=False,  # close() bounds the wait; an exit must never hang on it
        )
        url = traces_url(cfg.otlp_endpoint)
        self.exporter = _CountingExporter(
            OTLPSpanExporter(endpoint=url, timeout=cfg.export_timeout), dropped, url
        )
        self.processor = _BoundedProcessor(self.exporter, cfg.max_queue_size, dropped)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("oauth-gateway", __version__)

    def start(
        self, trace: RequestTrace, method: str, path: str, host: str | None, scheme: str
    ) -> SpanRecording | None:
        """The server span of a sampled request: a child of the incoming context, or the root
        of the new trace the data path started (same trace-id, so the same sampling)."""
        if trace.remote:
            parent = trace_api.SpanContext(
                int(trace.trace_id, 16),
                int(trace.parent_id, 16),
                is_remote=True,
                trace_flags=trace_api.TraceFlags(trace.flags),
                trace_state=_trace_state(trace.tracestate),
            )
            context = trace_api.set_span_in_context(trace_api.NonRecordingSpan(parent))
        else:
            self.ids.next_trace_id = int(trace.trace_id, 16)
            context = Context()  # a root: nothing inherited from whatever runs now
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
        try:
            span = self.tracer.start_span(
                method if known else "HTTP", context, SpanKind.SERVER, attributes
            )
        except Exception:  # tracing must never fail a request
            log.exception("span_start_failed")
            return None
        finally:
            self.ids.next_trace_id = 0
        if not span.is_recording():
            return None
        return SpanRecording(self, span, method if known else "HTTP")

    async def close(self) -> None:
        """Export what is queued (waiting `export_timeout`, at most 5 s), then stop; a
        collector that does not answer is given up on (its spans are lost), not waited for."""
        timeout = min(self.cfg.export_timeout, _CLOSE_WAIT)
        done = asyncio.get_running_loop().create_future()

        def shutdown() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    done.get_loop().call_soon_threadsafe(_set_done, done)

        threading.Thread(target=shutdown, name="gateway-span-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            self.exporter.inner.shutdown()  # abandon the retries of the export in progress
            log.warning("span_export_abandoned", endpoint=self.exporter.endpoint)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _trace_state(raw: bytes | None) -> trace_api.TraceState | None:
    if raw is None:
        return None
    return trace_api.TraceState.from_header([raw.decode("ascii", "replace")])


def _split_host(host: str) -> tuple[str, int]:
    """`server.address` and `server.port` of a Host header (port 0 when absent)."""
    address, sep, port = host.rpartition(":")
    if not sep or "]" in port or not port.isdigit():
        return host.strip("[]"), 0
    return address.strip("[]"), int(port)


class SpanRecording:
    """The spans of one sampled request (`tracecontext.Recording`)."""

    __slots__ = ("_cache", "_client", "_context", "_method", "_recorder", "_server")

    def __init__(self, recorder: SpanRecorder, server: Span, method: str) -> None:
        self._recorder = recorder
        self._server = server
        self._method = method
        self._context = trace_api.set_span_in_context(server)
        self._client: Span | None = None
        self._cache = ""

    def cache_hit(self, info: TokenInfo) -> None:
        # No child span for a dictionary lookup: the SDK's span costs several whole requests
        # (measured: bench/instructions.py, README). The server span says where the answer was.
        self._identified(info, "hit")

    async def lookup(self, pending: Awaitable[TokenInfo]) -> TokenInfo:
        span = self._recorder.tracer.start_span(
            "token lookup", self._context, attributes={"gateway.cache": "miss"}
        )
        scope = _Scope(self._recorder, span)
        token = SCOPE.set(scope)
        try:
            info = await pending
        except BaseException as exc:
            _fail(span, error_type(exc))
            span.end()
            self._server.set_attribute("gateway.cache", scope.cache)
            raise
        finally:
            SCOPE.reset(token)
        span.set_attribute("gateway.token_source", info.source)
        span.end()
        self._identified(info, scope.cache)
        return info

    def _identified(self, info: TokenInfo, cache: str) -> None:
        attributes = {
            "gateway.cache": cache,
            "gateway.token_source": info.source,
            "gateway.grant": info.grant,
        }
        if info.client_id is not None:
            attributes["gateway.client_id"] = info.client_id
        self._server.set_attributes(attributes)

    def upstream(self, method: str, upstream: str, address: str | None, port: int) -> bytes:
        attributes: dict[str, str | int] = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "gateway.upstream": upstream,
        }
        if address is not None:
            attributes["server.address"] = address
            attributes["server.port"] = port
        span = self._recorder.tracer.start_span(
            self._method, self._context, SpanKind.CLIENT, attributes
        )
        self._client = span
        ctx = span.get_span_context()
        # version 00 defines the sampled flag only (the SDK also sets Level 2's random flag)
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags & 1:02x}".encode()

    def end(self, status: int, reason: str | None, template: str | None) -> None:
        client = self._client
        if client is not None:
            if reason is not None:  # the gateway answered: the upstream's answer did not come
                _fail(client, reason)
            else:
                client.set_attribute("http.response.status_code", status)
                if status >= 400:
                    _fail(client, str(status))
            client.end()
        server = self._server
        attributes: dict[str, str | int] = {"http.response.status_code": status}
        if template is not None:  # the route's name is not repeated: its template names it
            attributes["http.route"] = template
            server.update_name(f"{self._method} {template}")
        if reason is not None:
            attributes["gateway.reason"] = reason
        server.set_attributes(attributes)  # one call: each costs the SDK a lock and a check
        if status >= 500:
            _fail(server, reason or str(status))
        server.end()


def _fail(span: Span, error: str) -> None:
    span.set_attribute("error.type", error)
    span.set_status(Status(StatusCode.ERROR))


class _Scope:
    """A token lookup in progress (`tracecontext.SpanScope`): the calls it makes are its
    children; the validator notes where the answer came from."""

    __slots__ = ("cache", "recorder", "span")

    def __init__(self, recorder: SpanRecorder, span: Span) -> None:
        self.recorder = recorder
        self.span = span
        self.cache = "miss"

    def child(self, name: str, attributes: dict[str, str | int]) -> ChildSpan:
        context = trace_api.set_span_in_context(self.span)
        kind = SpanKind.CLIENT
        return _Child(self.recorder.tracer.start_span(name, context, kind, attributes))

    def note(self, key: str, value: str) -> None:
        if key == "gateway.cache":
            self.cache = value
        self.span.set_attribute(key, value)


class _Child:
    """One IdP, JWKS or Redis call (`tracecontext.ChildSpan`)."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def set(self, key: str, value: str | int) -> None:
        self.span.set_attribute(key, value)

    def end(self, error: str | None) -> None:
        if error is not None:
            _fail(self.span, error)
        self.span.end()
