"""The session endpoint (SPEC section 6): GET shows the token's session, DELETE revokes it."""

from __future__ import annotations

import time

import orjson

from gateway.authenticate import Authenticator
from gateway.authn.validator import TokenValidator
from gateway.authz import AuthPolicy
from gateway.errors import MethodNotAllowedError
from gateway.http.exchange import Exchange

_METHODS = ("GET", "HEAD", "DELETE")
_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


class SessionEndpoint:
    """Answered by the gateway itself, never forwarded; the same authentication stage as a
    route, with the session policy (where tokens.query_param / form_param allow them)."""

    def __init__(self, authn: Authenticator, validator: TokenValidator, policy: AuthPolicy) -> None:
        self.authn = authn
        self.validator = validator
        self.policy = policy

    async def handle(self, ex: Exchange) -> None:
        if ex.head.method not in _METHODS:
            raise MethodNotAllowedError(_METHODS, "session_method")
        found = await self.authn.authenticate_token(ex, self.policy)
        info = found.info
        if ex.head.method == "DELETE":
            await self.validator.revoke(found.token, info, found.digest)
            ex.respond(200, list(_HEADERS), orjson.dumps({"revoked": True}))
            return
        now = time.time()
        body = {
            "access_token": found.token,
            "active": True,
            "client_id": info.client_id,
            "sub": info.subject,
            "scope": info.scope,
            "grant": info.grant,
            "exp": int(info.expires_at) if info.expires_at is not None else None,
            "expires_in": max(0, int(info.expires_at - now)) if info.expires_at else None,
        }
        ex.respond(200, list(_HEADERS), orjson.dumps(body))
