"""The request pipeline: extract → authenticate → authorize → forward.

The fast path (cached token, idle upstream connection) runs synchronously from the server's
read callback; anything that must wait (a token lookup, a form body, a new upstream connection)
continues in a task. Every failure is a GatewayError and becomes an answer through `ex.fail`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

import structlog

from gateway.authn.cache import token_key
from gateway.authn.info import TokenInfo
from gateway.authz import authorize
from gateway.errors import (
    GatewayError,
    MissingTokenError,
    NoRouteError,
    ValidatorUnavailableError,
)
from gateway.extract import Credentials, KnownBearer, extract_credentials, strip_form_token
from gateway.http.exchange import Exchange
from gateway.normalize import normalize_path
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway")
_FORM: Final = b"application/x-www-form-urlencoded"
_wall_clock: Final = time.time  # a C static when compiled, not a module attribute lookup


def is_preflight(ex: Exchange) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
    return (
        ex.method == "OPTIONS"
        and ex.header(b"origin") is not None
        and ex.header(b"access-control-request-method") is not None
    )


def spawn(ex: Exchange, work: Coroutine[Any, Any, None]) -> None:
    """Continue the exchange in a task; its failures become answers, a lost client cancels it."""

    async def guarded() -> None:
        try:
            await work
        except GatewayError as exc:
            ex.fail(exc)
        except asyncio.CancelledError:
            if not ex.ended:  # something awaited was cancelled, not this client's request
                ex.fail(ValidatorUnavailableError("interrupted"))
            # else the client left and the server ended the exchange
        except Exception:
            log.exception("request_failed", request_id=ex.request_id)
            ex.fail(GatewayError("internal_error"))

    task = asyncio.get_running_loop().create_task(guarded())
    ex.on_gone = task.cancel


class Pipeline:
    """Handles exchanges against one runtime (a reload builds a new Pipeline)."""

    def __init__(self, rt: Runtime) -> None:
        from gateway.sessions import SessionEndpoint

        self.rt = rt
        self.sessions = SessionEndpoint(self)

    def handle(self, ex: Exchange) -> None:
        """The server's entry point: route, then authenticate and forward."""
        rt = self.rt
        ex.on_end = rt.observe
        try:
            if ex.preset_error is not None:
                raise ex.preset_error
            path = normalize_path(ex.raw_path)
            ex.raw_path = path  # the upstream gets the normalised path
            if path == rt.session_path:
                spawn(ex, self.sessions.handle(ex))
                return
            route = rt.routes.match(ex.method, ex.host, path)
            if route is None:
                raise NoRouteError("no_route")
            ex.route = route
            ex.set_body_limit(route.max_body)
            if not route.auth_required or (route.preflight_pass and is_preflight(ex)):
                rt.forwarder.forward(ex, route, None)
            elif self._form_token_possible(ex, route):
                spawn(ex, self._authenticate_then_forward(ex, route))
            else:
                self._check_token(ex, route)
        except GatewayError as exc:
            ex.fail(exc)

    def _check_token(self, ex: Exchange, route: Route) -> None:
        """Cached token: authorize and forward now; otherwise look it up in a task.

        A keep-alive client sends the same Authorization value on every request: the
        connection keeps the last one with its token and cache key (a SHA-256), and extraction
        hands back that very token object when the value is equal (compared in constant time:
        a proxy in front may carry many users' requests on one connection). Freshness and
        revocation are still checked by peek_key() on every request."""
        conn = ex.conn
        memo = conn.token_memo
        creds = self.extract(ex, route, None, memo)
        token = creds.token
        assert token is not None
        if memo is not None and token is memo.token:
            key = memo.key
        else:
            key = token_key(token)
            raw = ex.header(b"authorization") if not (creds.in_query or creds.in_form) else None
            if raw is not None:
                conn.token_memo = KnownBearer(raw, token, key)
        now = _wall_clock()
        info = self.rt.validator.peek_key(key, now)
        if info is None:
            spawn(ex, self._validate_then_forward(ex, route, creds))
            return
        authorize(info, route, creds, self.rt.apps, now)
        self.rt.forwarder.forward(ex, route, info)

    async def _validate_then_forward(self, ex: Exchange, route: Route, creds: Credentials) -> None:
        self.rt.forwarder.forward(ex, route, await self._verify(route, creds))

    async def _authenticate_then_forward(self, ex: Exchange, route: Route) -> None:
        info = await self.authenticate(ex, route)
        self.rt.forwarder.forward(ex, route, info)

    def _form_token_possible(self, ex: Exchange, route: Route | None) -> bool:
        return self.rt.extract_policy(route).form_allowed and ex.method == "POST" and _is_form(ex)

    def extract(
        self,
        ex: Exchange,
        route: Route | None,
        form_body: bytes | None,
        known: KnownBearer | None = None,
    ) -> Credentials:
        """Credentials from the header, query or form body; RFC 6750 rules."""
        creds = extract_credentials(
            ex.headers, ex.query, self.rt.extract_policy(route), form_body, known
        )
        if creds.in_query:
            ex.private_cache = True  # RFC 6750 2.3
        if creds.token is None:
            raise MissingTokenError("missing_token")
        if creds.in_form and form_body is not None and not (route and route.forward_token):
            ex.replace_body(strip_form_token(form_body))
        return creds

    async def credentials(self, ex: Exchange, route: Route | None) -> Credentials:
        """extract(), after waiting for a urlencoded body when it may carry the token."""
        form_body = None
        if self._form_token_possible(ex, route):
            await ex.conn.wait_body(ex)
            if ex.body_error is not None:
                raise ex.body_error
            form_body = ex.take_buffered_body()
        return self.extract(ex, route, form_body)

    async def authenticate(self, ex: Exchange, route: Route) -> TokenInfo:
        """The slow path of extract → authenticate → authorize (also used by forward-auth)."""
        return await self._verify(route, await self.credentials(ex, route))

    async def _verify(self, route: Route, creds: Credentials) -> TokenInfo:
        """authenticate (cache, then the token sources) and authorize."""
        assert creds.token is not None
        validator = self.rt.validator
        info = validator.peek(creds.token) or await validator.validate(creds.token)
        authorize(info, route, creds, self.rt.apps, time.time())
        return info


def _is_form(ex: Exchange) -> bool:
    ctype = ex.header(b"content-type")
    return ctype is not None and ctype.split(b";", 1)[0].strip().lower() == _FORM
