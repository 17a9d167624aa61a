"""Everything built from one config that the data path reads: routes, validator, pools, logs.

A reload builds a new Runtime; caches (the validator) and unchanged upstream pools carry over.
"""

from __future__ import annotations

import time

import structlog

from gateway.authenticate import Authenticator, SenderCheck
from gateway.authn.validator import TokenValidator
from gateway.authz import AppRegistry
from gateway.bound import DpopVerifier
from gateway.config.models import GatewayConfig
from gateway.extract import strip_credentials_query
from gateway.forward import Forwarder
from gateway.forward_auth import ForwardAuthHandler
from gateway.http.exchange import Exchange
from gateway.http.pool import UpstreamPool
from gateway.logs import AccessLog, use_json
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.ratelimit.limiter import RateLimiter
from gateway.resource_metadata import ResourceMetadata
from gateway.routing import RouteTable, session_policy
from gateway.sessions import SessionEndpoint
from gateway.tracecontext import Recorder, RequestTrace, RequestTracer, scan

log = structlog.get_logger("gateway")


class Runtime:
    """The objects one config produces, each built here and handed its collaborators (the one
    place that wires the stages together); read-only for the data path."""

    def __init__(
        self,
        cfg: GatewayConfig,
        validator: TokenValidator,
        metrics: Metrics,
        pools: dict[str, UpstreamPool] | None = None,
        limiter: RateLimiter | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.cfg = cfg
        self.validator = validator
        self.metrics = metrics
        self.realm = cfg.realm
        self.session_path = cfg.session_path
        self.routes = RouteTable.from_config(cfg)
        self.apps = AppRegistry.from_config(cfg)
        old = pools or {}
        self.pools = {
            name: old[name] if name in old and old[name].cfg == u else UpstreamPool(name, u)
            for name, u in cfg.upstreams.items()
        }
        self.access = AccessLog(cfg.log.access, use_json(cfg.log))
        self.forwarder = Forwarder(cfg.trusted_proxies, self.pools, cfg.tokens.mtls.cert_header)
        dpop = DpopVerifier(cfg.tokens.dpop_settings)
        dpop.use_redis(validator.redis)
        sender = SenderCheck(dpop, self.forwarder.trusted, cfg.tokens.mtls.cert_header)
        self.authn = Authenticator(validator, self.apps, sender)
        # the buckets carry over a reload, as the token cache does
        self.limiter = limiter or RateLimiter(metrics.rate_limits)
        self.limiter.configure(validator.redis, cfg.trusted_proxies)
        sessions = SessionEndpoint(self.authn, validator, session_policy(cfg.tokens))
        #: the SDK side of `tracing:` (gateway/tracing.py), carried over by a reload that keeps it
        self.recorder = recorder
        tracer = None
        if cfg.tracing is not None:
            tracer = RequestTracer(recorder, recorder.bound if recorder is not None else 0)
        self.pipeline = Pipeline(
            self.routes, self.authn, self.forwarder, sessions, self.session_path, self.observe,
            self.limiter, ResourceMetadata.from_config(cfg), tracer,
        )  # fmt: skip
        decisions = Authenticator(validator, self.apps, sender.for_forward_auth())
        self.decider = ForwardAuthHandler(
            self.routes, decisions, self.observe_decision, self.limiter
        )

    def observe(self, ex: Exchange) -> None:
        """Metrics and the access-log line of a finished (or abandoned) exchange."""
        self._observe(ex, forwarded=True)

    def observe_decision(self, ex: Exchange) -> None:
        """The same for forward-auth decisions (nothing was forwarded)."""
        self._observe(ex, forwarded=False)

    def _observe(self, ex: Exchange, forwarded: bool) -> None:
        seconds = time.monotonic() - ex.started_at
        route, error = ex.route, ex.error
        if route is not None:
            name = route.name
        else:
            name = "session" if ex.head.path == self.session_path else "none"
        status = ex.status or 499
        trace = ex.trace
        trace_line = ex.trace_line or None  # a new trace that is not recorded: its line
        if trace_line is None and (trace is not None or error is not None or not forwarded):
            trace_line = _end_trace(ex, trace, status)
        self.metrics.stats.observe(name, ex.head.method, status, seconds)
        if error is not None:
            self.metrics.denials.labels(name, error.reason).inc()
            if error.status in (502, 504) and route is not None:
                self.metrics.upstream_errors.labels(route.upstream, error.reason).inc()
        if self.access.enabled:
            self.access.record(
                ex.head.request_id, ex.client_ip, ex.head.method, _loggable_path(ex), name, status,
                route.upstream if route and forwarded and error is None else None,
                int(seconds * 1_000_000), ex.bytes_sent,
                error.reason if error is not None else None, trace_line,
            )  # fmt: skip

    def close_pools(self, keep: dict[str, UpstreamPool] | None = None) -> None:
        """Close the pools a new runtime does not carry over (all of them without `keep`)."""
        for name, pool in self.pools.items():
            if keep is None or keep.get(name) is not pool:
                pool.close()


def _end_trace(ex: Exchange, trace: RequestTrace | None, status: int) -> str | None:
    """End a recorded exchange's spans; the trace context for its access line (its
    `traceparent` line). A refused request that never reached the forward stage, and a
    forward-auth decision, are looked at here for the context they came with."""
    if trace is None:
        trace = scan(ex.head.headers)
        if trace is None:
            return None
    recording = trace.recording
    if recording is not None:
        route, error = ex.route, ex.error
        recording.end(
            status,
            error.reason if error is not None else None,
            _route_template(route.kind, route.matcher) if route is not None else None,
        )
    return trace.lines


def _route_template(kind: str, matcher: str) -> str:
    """A route's `http.route`: its path, its prefix followed by `/*`, or its regex."""
    return matcher.rstrip("/") + "/*" if kind == "prefix" else matcher


def _loggable_path(ex: Exchange) -> str:
    """The path with credential query parameters removed; never a token."""
    query = strip_credentials_query(ex.head.query) if ex.head.query else ""
    path = ex.head.path if len(ex.head.path) <= 2048 else ex.head.path[:2048] + "..."
    return path + "?" + query if query else path
