"""The session endpoint (SPEC section 6): GET shows the token's session, DELETE revokes it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson

from gateway.errors import MethodNotAllowedError

if TYPE_CHECKING:
    from gateway.http.exchange import Exchange
    from gateway.pipeline import Pipeline

_METHODS = ("GET", "HEAD", "DELETE")
_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


class SessionEndpoint:
    """Answered by the gateway itself, never forwarded."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def handle(self, ex: Exchange) -> None:
        if ex.method not in _METHODS:
            raise MethodNotAllowedError(_METHODS, "session_method")
        creds = await self.pipeline.credentials(ex, None)
        token = creds.token
        assert token is not None
        validator = self.pipeline.rt.validator
        info = validator.peek(token) or await validator.validate(token)
        if ex.method == "DELETE":
            await validator.revoke(token, info)
            ex.respond(200, list(_HEADERS), orjson.dumps({"revoked": True}))
            return
        now = time.time()
        body = {
            "access_token": token,
            "active": True,
            "client_id": info.client_id,
            "sub": info.subject,
            "scope": info.scope,
            "grant": info.grant,
            "exp": int(info.expires_at) if info.expires_at is not None else None,
            "expires_in": max(0, int(info.expires_at - now)) if info.expires_at else None,
        }
        ex.respond(200, list(_HEADERS), orjson.dumps(body))
