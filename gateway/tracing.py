"""The spans of sampled requests, exported over OTLP/HTTP with the OpenTelemetry SDK's exporter.

Built only when `tracing.otlp_endpoint` is set (the SDK is imported then, not before). The data
path decides sampling itself (gateway/tracecontext.py) and calls in here for sampled requests
only: a server span per request, a child for the token lookup (an answer from the in-process
cache too, with `gateway.cache: hit`; a lookup that does work has, through the context variable
`tracecontext.SCOPE`, a client span for each IdP, JWKS or Redis call it makes), and a client
span for the upstream exchange, whose id the upstream receives as parent.

On the data path a span is a plain record (gateway/spans.py, compiled: names, ids as hex, start
and end in ns, an attribute dict, kind, error): no SDK object, context, lock or processor, so a
sampled request costs a few requests' worth rather than tens. The records go to a bounded queue
(`spans.SpanQueue`); one export thread writes each batch as one OTLP/protobuf body
(gateway/otlp.py, far cheaper than the SDK's encoder, which would hold the GIL for about 75 µs a
span) and posts it with the SDK's `OTLPSpanExporter` (its HTTP client: retries, compression,
headers, TLS). A record that finds the queue full is dropped at once (never waited for), and so
is a batch the collector did not take (down, hanging past `export_timeout`, refusing); both are
counted in `gateway_spans_dropped_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

import structlog
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import OTEL_BSP_SCHEDULE_DELAY
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

from gateway import __version__
from gateway.config.models import TracingConfig
from gateway.otlp import Envelope
from gateway.spans import DropCounter, SpanQueue, SpanRecording
from gateway.tracecontext import RequestTrace

log = structlog.get_logger("gateway")

_EXPORT_BATCH: Final = 512
_CLOSE_WAIT: Final = 5.0
_SCHEDULE_DELAY_MS: Final = 5000  # between exports unless a batch fills (OTEL_BSP_SCHEDULE_DELAY)
# The SDK's own export-failure and retry warnings repeat for every batch; ours say it once.
_QUIET_LOGGERS: Final = ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal")


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (`/v1/traces` added unless there)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class _Exporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter, given bodies encoded by gateway/otlp.py rather than SDK
    spans: its HTTP client posts them (retries with backoff, compression, headers, TLS, and the
    `OTEL_EXPORTER_OTLP_TRACES_*` variables). `export()`, which encodes SDK spans itself, is
    not used. This leans on the exporter's `_client` (the SDK's version is pinned in
    requirements.lock; tests/test_tracing.py exports through it to a real receiver)."""

    def export_body(self, body: bytes) -> bool:
        """Post one `ExportTraceServiceRequest`; whether the collector took it."""
        if self._shutdown:
            return False
        return bool(self._client.export(body).success)

    def close(self) -> None:
        """Stop: an export in progress gives up its retries."""
        self.shutdown()  # type: ignore[no-untyped-call]


class _CountingExporter:
    """The exporter, counting what it lost and logging the first failure of an episode."""

    def __init__(self, inner: _Exporter, dropped: DropCounter, endpoint: str) -> None:
        self.inner = inner
        self.dropped = dropped
        self.endpoint = endpoint
        self.failing = False

    def export(self, body: bytes, spans: int) -> None:
        try:
            ok = self.inner.export_body(body)
        except Exception:  # the export thread must go on; count the batch as lost
            ok = False
        if ok:
            if self.failing:
                self.failing = False
                log.info("span_export_recovered", endpoint=self.endpoint)
        else:
            self.dropped("export_failed", spans)
            if not self.failing:
                self.failing = True
                log.warning("span_export_failed", endpoint=self.endpoint, spans=spans)

    def shutdown(self) -> None:
        self.inner.close()


def envelope(resource: Resource, scope: InstrumentationScope) -> Envelope:
    """The resource and the instrumentation scope as the SDK encodes them: taken from its
    encoding of one span, once."""
    probe = ReadableSpan(
        name="probe",
        context=SpanContext(1, 1, False),
        resource=resource,
        instrumentation_scope=scope,
    )
    resource_spans = encode_spans([probe]).resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    return Envelope(
        resource_spans.resource.SerializeToString(),
        resource_spans.schema_url,
        scope_spans.scope.SerializeToString(),
        scope_spans.schema_url,
    )


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
        self.envelope = envelope(
            Resource.create({"service.name": cfg.service_name, "service.version": __version__}),
            InstrumentationScope("oauth-gateway", __version__),
        )
        url = traces_url(cfg.otlp_endpoint)
        self.exporter = _CountingExporter(
            _Exporter(endpoint=url, timeout=cfg.export_timeout), dropped, url
        )
        self.dropped = dropped
        self.batch_size = min(_EXPORT_BATCH, cfg.max_queue_size)
        self._wake = threading.Event()
        #: the data path's side (gateway/spans.py, compiled): appended there, taken here
        self.spans = SpanQueue(cfg.max_queue_size, self.batch_size, dropped, self._wake)
        self._flushes: deque[threading.Event] = deque()  # flush() calls waiting
        self._delay = _schedule_delay()
        self._stopped: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-span-export", daemon=True)
        self._thread.start()

    def start(
        self, trace: RequestTrace, method: str, path: str, host: str | None, scheme: str
    ) -> SpanRecording:
        """The server span of a sampled request (the queue's, compiled)."""
        return self.spans.start(trace, method, path, host, scheme)

    # -------------------------------------------------------------- the export thread
    def _run(self) -> None:
        wake, queue = self._wake, self.spans.queue
        while True:
            wake.wait(self._delay)
            wake.clear()
            flushes = [self._flushes.popleft() for _ in range(len(self._flushes))]
            stopping = self._stopped is not None
            while queue:
                count = min(len(queue), self.batch_size)
                batch = [queue.popleft() for _ in range(count)]
                self.exporter.export(self.envelope.body(batch), count)
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

        self.spans.open = False
        self._stopped = stopped
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            self.exporter.inner.close()  # abandon the retries of the export in progress
            log.warning("span_export_abandoned", endpoint=self.exporter.endpoint)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
