"""The authenticate stage: credentials → the token's identity → authorization, once for the
proxy, the session endpoint and forward-auth alike.

`begin()` answers without waiting when the token's answer is in the in-process cache (Envoy's
filter chain returning Continue); otherwise it returns a `Pending` and the caller awaits
`finish()` (StopIteration, resumed when the lookup answers). Both end in the same
authorization step, so a new check on a token is written once, in `_authorize`.
"""

from __future__ import annotations

import time
from typing import Final

from gateway.authn.cache import TokenDigest
from gateway.authn.info import TokenInfo
from gateway.authn.validator import TokenValidator
from gateway.authz import AppRegistry, AuthPolicy, authorize
from gateway.errors import MissingTokenError
from gateway.extract import Credentials, KnownBearer, extract_credentials, strip_form_token
from gateway.http.exchange import Exchange
from gateway.tracecontext import Recording

_FORM: Final = b"application/x-www-form-urlencoded"
_wall_clock: Final = time.time  # a C static when compiled, not a module attribute lookup


class Pending:
    """A request whose token must be looked up (or whose form body may carry it) first."""

    __slots__ = ("creds", "digest")

    def __init__(self, creds: Credentials | None, digest: TokenDigest | None) -> None:
        self.creds = creds  # None: the credentials are read once the form body is in
        self.digest = digest


class Authenticated:
    """What the session endpoint needs besides the identity: the token and its digest."""

    __slots__ = ("digest", "info", "token")

    def __init__(self, token: str, digest: TokenDigest, info: TokenInfo) -> None:
        self.token = token
        self.digest = digest
        self.info = info


class Authenticator:
    """One per runtime; reads the token cache and sources through the validator."""

    def __init__(self, validator: TokenValidator, apps: AppRegistry) -> None:
        self.validator = validator
        self.apps = apps

    # -------------------------------------------------------------- without waiting
    def begin(self, ex: Exchange, policy: AuthPolicy) -> TokenInfo | Pending:
        """The authorized identity when the cache knows the token; else what to finish().

        A keep-alive client sends the same Authorization value on every request: the
        connection keeps the last one with its token and digest, and extraction hands back that
        very token object when the value is equal (compared in constant time: a proxy in front
        may carry many users' requests on one connection). Freshness and revocation are still
        checked by the cache on every request."""
        if policy.extract.form_allowed and ex.head.method == "POST" and _is_form(ex):
            return Pending(None, None)  # the body may carry the token: wait for it
        conn = ex.conn
        memo = conn.token_memo
        creds = self._extract(ex, policy, None, memo)
        token = creds.token
        assert token is not None
        if memo is not None and token is memo.token:
            digest = memo.digest
        else:
            digest = TokenDigest.of(token)
            raw = ex.head.header(b"authorization") if not creds.in_query else None
            if raw is not None:
                conn.token_memo = KnownBearer(raw, token, digest)
        now = _wall_clock()
        info = self.validator.peek(digest, now)
        if info is None:
            return Pending(creds, digest)
        trace = ex.trace
        if trace is not None:
            recording = trace.recording
            if recording is not None:  # a sampled request: the lookup's span, a cache hit
                recording.cache_hit(info)
        self._authorize(info, policy, creds, now)
        return info

    # ---------------------------------------------------------------- after waiting
    async def finish(self, ex: Exchange, policy: AuthPolicy, pending: Pending) -> TokenInfo:
        """begin()'s answer once the token is looked up (and the form body is in)."""
        creds, digest = pending.creds, pending.digest
        if creds is None or digest is None:
            creds = await self.credentials(ex, policy)
            assert creds.token is not None
            digest = TokenDigest.of(creds.token)
        trace = ex.trace
        return await self.identify(
            creds, digest, policy, trace.recording if trace is not None else None
        )

    async def authenticate(self, ex: Exchange, policy: AuthPolicy) -> TokenInfo:
        """begin(), then finish() when it must wait."""
        result = self.begin(ex, policy)
        if isinstance(result, TokenInfo):
            return result
        return await self.finish(ex, policy, result)

    async def authenticate_token(self, ex: Exchange, policy: AuthPolicy) -> Authenticated:
        """authenticate(), keeping the token and its digest (the session endpoint's DELETE
        revokes it, its GET shows it)."""
        creds = await self.credentials(ex, policy)
        token = creds.token
        assert token is not None
        digest = TokenDigest.of(token)
        return Authenticated(token, digest, await self.identify(creds, digest, policy))

    async def credentials(self, ex: Exchange, policy: AuthPolicy) -> Credentials:
        """The credentials, after waiting for a urlencoded body when it may carry the token."""
        form_body = None
        if policy.extract.form_allowed and ex.head.method == "POST" and _is_form(ex):
            await ex.wait_body()
            if ex.body_error is not None:
                raise ex.body_error
            form_body = ex.take_buffered_body()
        return self._extract(ex, policy, form_body, None)

    async def identify(
        self,
        creds: Credentials,
        digest: TokenDigest,
        policy: AuthPolicy,
        recording: Recording | None = None,
    ) -> TokenInfo:
        """The token's identity from the cache or its sources, then authorized; a sampled
        request's `recording` gets the lookup's span (and, through it, the calls it makes)."""
        token = creds.token
        assert token is not None
        validator = self.validator
        info = validator.peek(digest, _wall_clock())
        if info is None:
            lookup = validator.validate(token, digest)
            info = await (lookup if recording is None else recording.lookup(lookup))
        elif recording is not None:
            recording.cache_hit(info)
        self._authorize(info, policy, creds, _wall_clock())
        return info

    # ------------------------------------------------------------------- shared steps
    def _extract(
        self,
        ex: Exchange,
        policy: AuthPolicy,
        form_body: bytes | None,
        known: KnownBearer | None,
    ) -> Credentials:
        """Credentials from the header, query or form body; RFC 6750 rules."""
        creds = extract_credentials(
            ex.head.headers, ex.head.query, policy.extract, form_body, known
        )
        if creds.in_query:
            ex.private_cache = True  # RFC 6750 2.3
        if creds.token is None:
            raise MissingTokenError("missing_token")
        if creds.in_form and form_body is not None and policy.strip_form_token:
            ex.replace_body(strip_form_token(form_body))
        return creds

    def _authorize(
        self, info: TokenInfo, policy: AuthPolicy, creds: Credentials, now: float
    ) -> None:
        """Every check of a known token against the route's policy, in one place."""
        authorize(info, policy, creds, self.apps, now)


def _is_form(ex: Exchange) -> bool:
    ctype = ex.head.header(b"content-type")
    return ctype is not None and ctype.split(b";", 1)[0].strip().lower() == _FORM
