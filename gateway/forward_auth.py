"""Forward-auth (decision) mode, SPEC section 10: judge the request a front proxy describes.

nginx `auth_request` sends X-Original-Method / X-Original-URI; Traefik ForwardAuth and Envoy
ext_authz (HTTP) send X-Forwarded-Method / -Proto / -Host / -Uri. The credentials are those of
the decision request itself. 200 with the X-Auth-* headers means "let it through"; nothing is
forwarded. This listener must be reachable only by the front proxy: it trusts those headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import NoRouteError
from gateway.forward import identity_headers
from gateway.http.exchange import Exchange
from gateway.normalize import normalize_path
from gateway.pipeline import is_preflight, spawn

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline


def describe(ex: Exchange) -> None:
    """Rewrite the exchange into the request the front proxy asks about."""
    method = ex.header(b"x-forwarded-method") or ex.header(b"x-original-method")
    uri = ex.header(b"x-forwarded-uri") or ex.header(b"x-original-uri")
    host = ex.header(b"x-forwarded-host")
    if method is not None:
        ex.method = method.decode("latin-1").strip().upper()
    if uri is not None:
        path, _, query = uri.decode("latin-1").partition("?")
        ex.raw_path = path or "/"
        ex.query = query
    if host is not None:
        ex.host = host.decode("latin-1").strip().lower()


class ForwardAuthHandler:
    """The decision endpoint: the same route matching, grants, scopes and proofs as proxy mode."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def handle(self, ex: Exchange) -> None:
        """The server's entry point for the decision listener."""
        ex.on_end = self.pipeline.rt.observe_decision
        spawn(ex, self.decide(ex))

    async def decide(self, ex: Exchange) -> None:
        rt = self.pipeline.rt
        if ex.preset_error is not None:
            raise ex.preset_error
        describe(ex)
        path = normalize_path(ex.raw_path)
        ex.raw_path = path
        ex.route = route = rt.routes.match(ex.method, ex.host, path)
        if route is None:
            raise NoRouteError("no_route")
        headers: list[tuple[bytes, bytes]] = []
        if route.auth_required and not (route.preflight_pass and is_preflight(ex)):
            info = await self.pipeline.authenticate(ex, route)
            headers = list(identity_headers(info))
        ex.respond(200, headers, b"")
