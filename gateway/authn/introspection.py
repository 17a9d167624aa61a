"""The `introspection` token source (RFC 7662), and RFC 7009 revocation at the same server.

Client authentication is client_secret_basic (HTTP Basic over the form-urlencoded id and
secret, RFC 6749 section 2.3.1), client_secret_post, or tls_client_auth (RFC 8705 section 2:
the client certificate of the source's `tls` block, `client_id` in the form). An unreachable
server (connect error, timeout, TLS failure, 5xx, a body that is not a JSON object) and a
refusal of our own credentials (401/403) make the source unavailable, never the token invalid.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import structlog

from gateway.authn.grants import GrantMapper, info_from_claims
from gateway.authn.idp_tls import IdpTls
from gateway.authn.info import TokenInfo
from gateway.config.models import IntrospectionSource
from gateway.errors import InvalidTokenError, ValidatorUnavailableError
from gateway.tracecontext import ClientSpan, http_call_attributes

log = structlog.get_logger()

SessionGetter = Callable[[], aiohttp.ClientSession]


def basic_auth(client_id: str, client_secret: str) -> str:
    """`Authorization: Basic` value with both parts form-urlencoded first (RFC 6749 2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


class IntrospectionTokenSource:
    """Asks the authorization server; always answers (active true or false) when reachable."""

    name = "introspection"

    def __init__(
        self,
        cfg: IntrospectionSource,
        session: SessionGetter,
        grants: GrantMapper,
        tls: IdpTls | None = None,
    ):
        self.cfg = cfg
        self._session = session
        self.grants = grants
        self.tls = tls or IdpTls("introspection.tls", cfg.tls)
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        self._credentials_rejected = False

    def applies(self, token: str) -> bool:
        """Every token can be introspected."""
        return True

    async def close(self) -> None:
        """Nothing of its own to release (the HTTP session belongs to the validator)."""

    async def lookup(self, token: str, digest: str) -> TokenInfo:
        """TokenInfo for an active token; inactive or expired -> InvalidTokenError."""
        status, body = await self._post(self.cfg.url, token)
        if status != 200:
            self._refused(status)
        if not isinstance(body, dict):
            raise ValidatorUnavailableError("introspection_bad_answer")
        self._credentials_rejected = False
        return self._parse(body)

    async def revoke(self, token: str) -> None:
        """RFC 7009 revocation at `revocation_url`; raises ValidatorUnavailableError on failure."""
        if self.cfg.revocation_url is None:
            return
        status, _ = await self._post(self.cfg.revocation_url, token, want_json=False)
        if status != 200:
            self._refused(status)

    def _parse(self, body: dict[str, Any]) -> TokenInfo:
        if body.get("active") is not True:
            raise InvalidTokenError("inactive")
        info = info_from_claims(body, self.grants.from_claims(body), self.name)
        if info.expires_at is not None and info.expires_at <= time.time():
            raise InvalidTokenError("expired")
        return info

    def _refused(self, status: int) -> None:
        """Map a non-200 answer: always "unavailable" (the token was not judged)."""
        if status in (401, 403):
            if not self._credentials_rejected:  # one error line per episode, not per request
                self._credentials_rejected = True
                log.error("introspection_client_rejected", status=status, url=self.cfg.url)
            raise ValidatorUnavailableError("introspection_client_rejected")
        raise ValidatorUnavailableError(f"introspection_status_{status}")

    def _request(self, token: str) -> tuple[dict[str, str], dict[str, str]]:
        form = {"token": token, "token_type_hint": "access_token"}
        headers = {"Accept": "application/json"}
        method = self.cfg.auth_method
        if method == "tls_client_auth":  # the certificate authenticates; no secret is sent
            form["client_id"] = self.cfg.client_id
            return form, headers
        secret = self.cfg.client_secret.get_secret_value() if self.cfg.client_secret else ""
        if method == "client_secret_basic":
            headers["Authorization"] = basic_auth(self.cfg.client_id, secret)
        else:
            form.update(client_id=self.cfg.client_id, client_secret=secret)
        return form, headers

    async def _post(self, url: str, token: str, *, want_json: bool = True) -> tuple[int, Any]:
        """One POST of the token; a span of a sampled request's trace (never the token)."""
        with ClientSpan("POST", http_call_attributes("POST", url)) as span:
            status, body = await self._send(url, token, want_json)
            span.set("http.response.status_code", status)
            return status, body

    async def _send(self, url: str, token: str, want_json: bool) -> tuple[int, Any]:
        form, headers = self._request(token)
        try:
            async with self._session().post(
                url,
                data=form,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                ssl=self.tls.ssl,
            ) as resp:
                self.tls.succeeded()
                if resp.status != 200 or not want_json:
                    await resp.read()
                    return resp.status, None
                return resp.status, await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            outage = self.tls.failure(exc, url)  # an untrusted IdP is an outage, never a 401
            if outage is not None:
                raise outage from exc
            raise ValidatorUnavailableError(f"introspection_{type(exc).__name__}") from exc
