"""The request pipeline: extract → authenticate → authorize → forward.

Every failure is a GatewayError; it becomes an answer here and nowhere else.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.authn.info import TokenInfo
from gateway.authz import authorize
from gateway.errors import GatewayError, MissingTokenError, NoRouteError
from gateway.extract import Credentials, extract_credentials, strip_form_token
from gateway.http.exchange import Exchange
from gateway.normalize import normalize_path
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.runtime import Runtime

_FORM = b"application/x-www-form-urlencoded"


def is_preflight(ex: Exchange) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
    return (
        ex.method == "OPTIONS"
        and ex.header(b"origin") is not None
        and ex.header(b"access-control-request-method") is not None
    )


class Pipeline:
    """Handles one exchange against one runtime (a reload builds a new Pipeline)."""

    def __init__(self, rt: Runtime) -> None:
        from gateway.sessions import SessionEndpoint

        self.rt = rt
        self.sessions = SessionEndpoint(self)

    async def handle(self, ex: Exchange) -> None:
        rt = self.rt
        route: Route | None = None
        error: GatewayError | None = None
        try:
            if ex.preset_error is not None:
                raise ex.preset_error
            path = normalize_path(ex.raw_path)
            ex.raw_path = path  # the upstream gets the normalised path
            if path == rt.session_path:
                await self.sessions.handle(ex)
                return
            route = rt.routes.match(ex.method, ex.host, path)
            if route is None:
                raise NoRouteError("no_route")
            ex.set_body_limit(route.max_body)
            info = None
            if route.auth_required and not (route.preflight_pass and is_preflight(ex)):
                info = await self.authenticate(ex, route)
            await rt.forwarder.forward(ex, route, info)
        except GatewayError as exc:
            error = exc
            ex.send_error(exc, rt.realm)
        finally:
            rt.observe(ex, route, error)

    async def credentials(self, ex: Exchange, route: Route | None) -> Credentials:
        """Extract the token (and proof) from the header, query or form body."""
        rt = self.rt
        policy = rt.extract_policy(route)
        form_body = None
        if policy.form_allowed and ex.method == "POST" and _is_form(ex):
            await ex.conn.wait_body(ex)
            if ex.body_error is not None:
                raise ex.body_error
            form_body = ex.take_buffered_body()
        creds = extract_credentials(ex.headers, ex.query, policy, form_body)
        if creds.in_query:
            ex.private_cache = True  # RFC 6750 2.3
        if creds.token is None:
            raise MissingTokenError("missing_token")
        if creds.in_form and form_body is not None and not (route and route.forward_token):
            ex.replace_body(strip_form_token(form_body))
        return creds

    async def authenticate(self, ex: Exchange, route: Route) -> TokenInfo:
        creds = await self.credentials(ex, route)
        token = creds.token
        assert token is not None
        validator = self.rt.validator
        info = validator.peek(token)
        if info is None:
            info = await validator.validate(token)
        authorize(info, route, creds, self.rt.apps, time.time())
        return info


def _is_form(ex: Exchange) -> bool:
    ctype = ex.header(b"content-type")
    return ctype is not None and ctype.split(b";", 1)[0].strip().lower() == _FORM
