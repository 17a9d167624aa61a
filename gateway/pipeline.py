"""The request pipeline: route → authenticate (extract, identify, authorize) → forward.

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
        tracer: RequestTracer | None = None,
    ) -> None:
        self.routes = routes
        self.authn = authn
        self.forwarder = forwarder
        self.sessions = sessions
        self.session_path = session_path
        self.observe = observe
        self.tracer = tracer  # `tracing:` configured: every request gets a trace context

    def handle(self, ex: Exchange) -> None:
        """The server's entry point: route, then authenticate and forward."""
        ex.on_end = self.observe
        tracer = self.tracer
        if tracer is not None:
            head = ex.head
            ex.trace = tracer.begin(head.headers, head.method, head.path, head.host, ex.conn.scheme)
        try:
            if ex.preset_error is not None:
                raise ex.preset_error
            path = normalize_path(ex.head.path)
            ex.head.path = path  # the upstream gets the normalised path
            if path == self.session_path:
                spawn(ex, self.sessions.handle(ex))
                return
            route = match_route(self.routes, ex, path)
            ex.set_body_limit(route.max_body)
            policy = checked_policy(ex, route)
            if policy is None:
                self.forwarder.forward(ex, route, None)
                return
            result = self.authn.begin(ex, policy)
            if isinstance(result, TokenInfo):
                self.forwarder.forward(ex, route, result)
            else:
                spawn(ex, self._finish_then_forward(ex, route, policy, result))
        except GatewayError as exc:
            ex.fail(exc)

    async def _finish_then_forward(
        self, ex: Exchange, route: Route, policy: AuthPolicy, pending: Pending
    ) -> None:
        info = await self.authn.finish(ex, policy, pending)
        self.forwarder.forward(ex, route, info)
