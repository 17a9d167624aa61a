"""The forward stage: send an allowed exchange to its route's upstream pool, on an idle
pooled connection at once or on a new one in a task, with one retry where it is safe.

What the upstream receives is decided by `gateway/upstream_headers.py`; how it is written on
the wire by `gateway/http/outgoing.py`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from gateway.authn.info import TokenInfo
from gateway.errors import GatewayError, UpstreamError
from gateway.http.exchange import BODY_NONE, Exchange
from gateway.http.outgoing import OutgoingRequest
from gateway.http.pool import UpstreamPool
from gateway.http.tasks import spawn
from gateway.http.upstream import UpstreamConnection, UpstreamResetError
from gateway.routing import Route
from gateway.tracecontext import Recording
from gateway.upstream_headers import TrustedProxies, header_actions, upstream_request

_IDEMPOTENT: Final = frozenset(
    {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
)  # RFC 9110 9.2.2


class Forwarder:
    """Sends allowed requests to their route's upstream pool."""

    def __init__(
        self,
        trusted_proxies: Iterable[str],
        pools: dict[str, UpstreamPool],
        cert_header: str = "x-forwarded-client-cert",
    ) -> None:
        self.pools = pools
        self.trusted = TrustedProxies(trusted_proxies)
        self.special = header_actions(cert_header)

    def forward(self, ex: Exchange, route: Route, info: TokenInfo | None) -> None:
        """Relay the exchange: at once on an idle pooled connection, else after connecting."""
        pool = self.pools[route.upstream]
        ex.send_continue()
        trace = ex.trace
        if trace is not None:
            recording = trace.recording
            if recording is not None:  # the upstream exchange's span is the upstream's parent
                trace.set_upstream_parent(_upstream_span(recording, ex, pool))
        trusted = ex.client_ip in self.trusted
        request = upstream_request(ex, route, info, trusted, ex.conn.scheme, self.special)
        conn = None if ex.head.upgrade else pool.take_idle()
        # a kept-alive connection may be closed under us; retrying is safe only without a body
        # and for idempotent methods (the upstream may have acted before the reset)
        retry = ex.body_mode == BODY_NONE and not ex.head.upgrade and ex.head.method in _IDEMPOTENT
        if conn is None:
            spawn(ex, self._connect_and_send(ex, request, pool, ex.head.upgrade, retry))
        else:
            self._send(conn, ex, request, retry)

    async def _connect_and_send(
        self,
        ex: Exchange,
        request: OutgoingRequest,
        pool: UpstreamPool,
        fresh: bool,
        retry: bool,
    ) -> None:
        conn = await pool.acquire(fresh=fresh)
        if not ex.ended:
            self._send(conn, ex, request, retry)
        else:
            pool.release(conn, reusable=True)

    def _send(
        self, conn: UpstreamConnection, ex: Exchange, request: OutgoingRequest, retry: bool
    ) -> None:
        reused = conn.reused

        def on_error(exc: GatewayError) -> None:
            if isinstance(exc, UpstreamResetError):
                if retry and reused:  # a kept-alive connection closed under us: once, fresh
                    spawn(ex, self._connect_and_send(ex, request, conn.pool, True, False))
                    return
                exc = UpstreamError("upstream_reset")
            ex.fail(exc)

        target = conn.target
        head = request.render(target.base_path, target.authority)
        conn.send(ex, head, request.chunked, conn.pool.cfg.timeout, on_error)
        ex.on_gone = conn.abort
        ex.attach_sink(conn)
        conn.flush()


def _upstream_span(recording: Recording, ex: Exchange, pool: UpstreamPool) -> str:
    """Start the upstream exchange's client span; the `traceparent` the upstream receives."""
    targets = pool.targets
    target = targets[0] if len(targets) == 1 else None  # with several, not known yet
    return recording.upstream(
        ex.head.method,
        pool.name,
        target.host if target is not None else None,
        target.port if target is not None else 0,
    )
