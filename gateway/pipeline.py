"""The request pipeline: route → authenticate (extract, identify, authorize) → rate limits →
forward.

The fast path (cached token, idle upstream connection) runs synchronously from the server's
read callback; anything that must wait (a token lookup, a form body, a new upstream connection)
continues in a task (`gateway/http/tasks.py`). Every failure is a GatewayError and becomes an
answer through `ex.fail`. The collaborators are built by the runtime and passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.authenticate import Authenticator, Pending
from gateway.authn.info import TokenInfo
from gateway.authz import AuthPolicy
from gateway.errors import GatewayError, NoRouteError
from gateway.forward import Forwarder
from gateway.http.exchange import Exchange
from gateway.http.tasks import spawn
from gateway.normalize import normalize_path
from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.policy import RoutePolicies
from gateway.resource_metadata import ResourceMetadata
from gateway.routing import Route, RouteTable
from gateway.sessions import SessionEndpoint
from gateway.tracecontext import RequestTracer


def is_preflight(ex: Exchange) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
    return (
        ex.head.method == "OPTIONS"
        and ex.head.header(b"origin") is not None
        and ex.head.header(b"access-control-request-method") is not None
    )


def checked_policy(ex: Exchange, route: Route) -> AuthPolicy | None:
    """The route's token policy, or None when the request goes through without a token
    (a public route, or a CORS preflight on a route that lets them pass)."""
    auth = route.auth
    if auth is None or (auth.preflight_pass and is_preflight(ex)):
        return None
    return auth


def match_route(routes: RouteTable, ex: Exchange, path: str) -> Route:
    """The route of the exchange's normalised path; NoRouteError when none matches."""
    route = routes.match(ex.head.method, ex.head.host, path)
    if route is None:
        raise NoRouteError("no_route")
    ex.route = route
    return route


class Pipeline:
    """Handles the main listener's exchanges for one runtime (a reload builds a new one)."""

    def __init__(
        self,
        routes: RouteTable,
        authn: Authenticator,
        forwarder: Forwarder,
        sessions: SessionEndpoint,
        session_path: str | None,
        observe: Callable[[Exchange], None],
        limiter: RateLimiter,
        metadata: ResourceMetadata | None = None,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.routes = routes
        self.limiter = limiter
        self.authn = authn
        self.forwarder = forwarder
        self.sessions = sessions
        self.session_path = session_path
        self.observe = observe
        self.metadata = metadata  # RFC 9728 documents; None: no resource configured
        self.tracer = tracer  # `tracing:` configured: every request gets a trace context

    def handle(self, ex: Exchange) -> None:
        """The server's entry point: route, then authenticate and forward."""
        ex.on_end = self.observe
        tracer = self.tracer
        if tracer is not None:
            head = ex.head
            line = tracer.quiet_line(head.headers)
            if line is not None:
                ex.trace_line = line
            else:
                ex.trace = tracer.begin(
                    head.headers, head.method, head.path, head.host, ex.conn.scheme
                )
        try:
            if ex.preset_error is not None:
                raise ex.preset_error
            path = normalize_path(ex.head.path)
            ex.head.path = path  # the upstream gets the normalised path
            if path == self.session_path:
                spawn(ex, self.sessions.handle(ex))
                return
            metadata = self.metadata
            if metadata is not None:
                document = metadata.get(path)
                if document is not None:
                    metadata.answer(ex, document)
                    return
            route = match_route(self.routes, ex, path)
            ex.set_body_limit(route.max_body)
            policy = checked_policy(ex, route)
            if policy is None:
                if route.limits is None:
                    self.forwarder.forward(ex, route, None)
                else:
                    self._limit_then_forward(ex, route, None)
                return
            result = self.authn.begin(ex, policy)
            if isinstance(result, TokenInfo):
                if route.limits is None:
                    self.forwarder.forward(ex, route, result)
                else:
                    self._limit_then_forward(ex, route, result)
            else:
                spawn(ex, self._finish_then_forward(ex, route, policy, result))
        except GatewayError as exc:
            ex.fail(exc)

    async def _finish_then_forward(
        self, ex: Exchange, route: Route, policy: AuthPolicy, pending: Pending
    ) -> None:
        info = await self.authn.finish(ex, policy, pending)
        limits = route.limits
        if limits is not None:
            await self.limiter.acquire(ex, limits, info)
        self.forwarder.forward(ex, route, info)

    def _limit_then_forward(self, ex: Exchange, route: Route, info: TokenInfo | None) -> None:
        """The route's rate limits (raise RateLimitedError when over), then forward: at once,
        or in a task when a key must hear from Redis first."""
        limits = route.limits
        assert limits is not None
        if self.limiter.admit(ex, limits, info):
            self.forwarder.forward(ex, route, info)
        else:
            spawn(ex, self._wait_then_forward(ex, route, limits, info))

    async def _wait_then_forward(
        self, ex: Exchange, route: Route, limits: RoutePolicies, info: TokenInfo | None
    ) -> None:
        await self.limiter.wait(ex, limits, info)
        self.forwarder.forward(ex, route, info)
