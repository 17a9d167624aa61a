"""Prometheus metrics of one gateway process (a fresh registry per runtime owner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Not Final: mypyc would inline the tuple literal and rebuild it (15 floats) on every use.
_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_LAST_BUCKET: Final = len(_BUCKETS)  # the +Inf bucket's index


class _RouteStats:
    """One route's counters: requests by (method, status), latency buckets and their sum."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(_BUCKETS) + 1)  # one count per bucket, then +Inf
        self.bounds: list[float] = list(_BUCKETS)
        self.total = 0.0


class RequestStats(Collector):
    """Requests by route/method/status and latency by route, kept in plain objects (the data
    path is single-threaded) and turned into Prometheus families only when scraped."""

    def __init__(self) -> None:
        self.routes: dict[str, _RouteStats] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = _RouteStats()
        key = (method if method in _METHODS else "OTHER", status)
        counts = stats.counts
        counts[key] = counts.get(key, 0) + 1
        # bisect_left by hand: compiled, one or two comparisons for the usual sub-ms answer
        # (bisect's generic call and boxed-float comparisons cost more than the whole update)
        i = 0
        bounds = stats.bounds
        while i < _LAST_BUCKET and bounds[i] < seconds:
            i += 1
        stats.buckets[i] += 1
        stats.total += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests", "Requests answered.", labels=["route", "method", "status"]
        )
        duration = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time from request head to the end of the answer.",
            labels=["route"],
        )
        for route, stats in sorted(self.routes.items()):
            for (method, status), n in sorted(stats.counts.items()):
                requests.add_metric([route, method, str(status)], n)
            cumulative, running = [], 0
            for bound, n in zip((*map(str, _BUCKETS), "+Inf"), stats.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            duration.add_metric([route], cumulative, stats.total)
        yield requests
        yield duration


class RateLimitStats(Collector):
    """Rate-limit refusals by route and policy, and decisions taken on this process's own
    counts while Redis was unreachable, by policy (plain dicts, updated by the limiter)."""

    def __init__(self) -> None:
        self.limited: dict[tuple[str, str], int] = {}
        self.local: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        limited = CounterMetricFamily(
            "gateway_rate_limited",
            "Requests refused with 429 by a rate limit.",
            labels=["route", "policy"],
        )
        for (route, policy), n in sorted(self.limited.items()):
            limited.add_metric([route, policy], n)
        local = CounterMetricFamily(
            "gateway_rate_limit_local",
            "Rate-limit decisions taken on this process's own counts while Redis was unreachable.",
            labels=["policy"],
        )
        for policy, n in sorted(self.local.items()):
            local.add_metric([policy], n)
        yield limited
        yield local


class Metrics:
    """Requests by route and status, latency, upstream errors, denials, in-flight, dropped
    spans."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stats = RequestStats()
        r.register(self.stats)
        self.rate_limits = RateLimitStats()
        r.register(self.rate_limits)
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures (refused, reset, timeout).",
            ["upstream", "reason"],
            registry=r,
        )
        self.denials = Counter(
            "gateway_denials_total",
            "Requests refused by the gateway.",
            ["route", "reason"],
            registry=r,
        )
        self.in_flight = Gauge("gateway_in_flight", "Requests being handled.", registry=r)
        self.reloads = Counter(
            "gateway_config_reloads_total", "Config reloads.", ["outcome"], registry=r
        )
        self.tls_reloads = Counter(
            "gateway_tls_reloads_total",
            "TLS certificate files re-read after a change.",
            ["tls", "outcome"],
            registry=r,
        )
        self.spans_dropped = Counter(
            "gateway_spans_dropped_total",
            "Spans that will never reach the collector: queue full, or an export that failed.",
            ["reason"],
            registry=r,
        )
        for reason in ("queue_full", "export_failed"):
            self.spans_dropped.labels(reason)  # both series exist from the start, at 0
        self.observe = self.stats.observe

    def count_dropped_spans(self, reason: str, count: int) -> None:
        """Called from the span exporter's thread too (prometheus_client counters are
        thread-safe)."""
        self.spans_dropped.labels(reason).inc(count)

    def track_in_flight(self, read: Callable[[], float]) -> None:
        self.in_flight.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
