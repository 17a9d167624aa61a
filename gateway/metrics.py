"""Prometheus metrics of one gateway process (a fresh registry per runtime owner)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Requests by route and status, latency, upstream errors, denials, in-flight."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered.",
            ["route", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request head to the end of the answer.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
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
        self._children: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._hist: dict[str, Callable[[float], None]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request; label children are cached so the hot path stays cheap."""
        m = method if method in _METHODS else "OTHER"
        key = (route, m, status)
        inc = self._children.get(key)
        if inc is None:
            inc = self.requests.labels(route, m, str(status)).inc
            self._children[key] = inc
        inc()
        obs = self._hist.get(route)
        if obs is None:
            obs = self.duration.labels(route).observe
            self._hist[route] = obs
        obs(seconds)

    def track_in_flight(self, read: Callable[[], float]) -> None:
        self.in_flight.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
