"""Forward-auth (decision) mode, SPEC section 10: judge the request a front proxy describes.

nginx `auth_request` sends X-Original-Method / X-Original-URI; Traefik ForwardAuth and Envoy
ext_authz (HTTP) send X-Forwarded-Method / -Proto / -Host / -Uri. The credentials are those of
the decision request itself. 200 with the X-Auth-* headers means "let it through"; nothing is
forwarded. This listener must be reachable only by the front proxy: it trusts those headers.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.authenticate import Authenticator
from gateway.http.exchange import Exchange
from gateway.http.tasks import spawn
from gateway.normalize import normalize_path
from gateway.pipeline import checked_policy, match_route
from gateway.ratelimit.limiter import RateLimiter
from gateway.routing import RouteTable
from gateway.upstream_headers import identity_headers


def describe(ex: Exchange) -> None:
    """Rewrite the exchange into the request the front proxy asks about."""
    method = ex.head.header(b"x-forwarded-method") or ex.head.header(b"x-original-method")
    uri = ex.head.header(b"x-forwarded-uri") or ex.head.header(b"x-original-uri")
    host = ex.head.header(b"x-forwarded-host")
    if method is not None:
        ex.head.method = method.decode("latin-1").strip().upper()
    if uri is not None:
        path, _, query = uri.decode("latin-1").partition("?")
        ex.head.path = path or "/"
        ex.head.query = query
    if host is not None:
        ex.head.host = host.decode("latin-1").strip().lower()


class ForwardAuthHandler:
    """The decision endpoint: the same routing and authentication stage as proxy mode."""

    def __init__(
        self,
        routes: RouteTable,
        authn: Authenticator,
        observe: Callable[[Exchange], None],
        limiter: RateLimiter,
    ) -> None:
        self.routes = routes
        self.authn = authn
        self.observe = observe
        self.limiter = limiter

    def handle(self, ex: Exchange) -> None:
        """The server's entry point for the decision listener."""
        ex.on_end = self.observe
        spawn(ex, self.decide(ex))

    async def decide(self, ex: Exchange) -> None:
        if ex.preset_error is not None:
            raise ex.preset_error
        describe(ex)
        path = normalize_path(ex.head.path)
        ex.head.path = path
        route = match_route(self.routes, ex, path)
        headers: list[tuple[bytes, bytes]] = []
        policy = checked_policy(ex, route)
        info = None
        if policy is not None:
            info = await self.authn.authenticate(ex, policy)
            headers = identity_headers(info)
        if route.limits is not None:  # the same limits as proxy mode (this request counts)
            await self.limiter.acquire(ex, route.limits, info)
        ex.respond(200, headers, b"")
