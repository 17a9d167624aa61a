"""TokenValidator: the in-process cache, the shared Redis cache, then the sources in order.

The first source that knows the token answers. A source that cannot be reached does not make
a token invalid: if no later source vouches for it, the answer is ValidatorUnavailableError
(503), or a positive answer kept within `ttl + stale_if_error` (never past exp). Concurrent
lookups of one token share a single in-flight task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from typing import Protocol

import aiohttp
import jwt
import structlog

from gateway.authn.breaker import CircuitBreaker
from gateway.authn.cache import (
    Entry,
    LocalCache,
    SharedCache,
    TokenDigest,
    negative_entry,
    positive_entry,
)
from gateway.authn.grants import GrantMapper
from gateway.authn.idp_tls import IdpTls
from gateway.authn.info import TokenInfo
from gateway.authn.introspection import IntrospectionTokenSource
from gateway.authn.jwt import JwtTokenSource, is_jws
from gateway.authn.revocation import Revocations
from gateway.authn.store import (
    NO_BINDING,
    Binding,
    MemoryTokenStore,
    RedisTokenStore,
    StoreTokenSource,
    TokenStore,
    issue,
)
from gateway.config.models import (
    CacheConfig,
    GatewayConfig,
    IntrospectionSource,
    JwtSource,
    TokensConfig,
)
from gateway.errors import InvalidTokenError, StoreUnavailableError, ValidatorUnavailableError
from gateway.redis_conn import RedisConnection, RedisUnavailableError
from gateway.tracecontext import note

log = structlog.get_logger()


class TokenSource(Protocol):
    """One place that can vouch for tokens."""

    name: str

    def applies(self, token: str) -> bool:
        """Whether this source should be asked about this token at all."""

    async def lookup(self, token: str, digest: str) -> TokenInfo | None:
        """TokenInfo if active; None if unknown here; raises InvalidTokenError or
        ValidatorUnavailableError."""

    async def close(self) -> None:
        """Stop work in progress."""


class TokenValidator:
    """Answers "which active token is this?" for the request path; one per process."""

    def __init__(
        self,
        cfg: TokensConfig,
        redis: RedisConnection | None,
        store: TokenStore,
        grants: GrantMapper,
    ) -> None:
        self.cfg = cfg
        self.redis = redis
        self.store = store
        self.grants = grants
        self.local = LocalCache(cfg.cache)
        self.shared = SharedCache(redis, cfg.cache) if redis is not None else None
        self.sources: list[TokenSource] = []
        self.breakers: list[CircuitBreaker] = []  # one per source, same order
        self.revocations = Revocations(redis, self.local, self.shared, store, None, cfg.cache)
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, asyncio.Task[TokenInfo]] = {}
        self._down: set[str] = set()
        #: the client TLS of the sources that have a `tls` block
        self.tls: list[IdpTls] = []

    @classmethod
    def from_config(cls, cfg: GatewayConfig, redis: RedisConnection | None) -> TokenValidator:
        """Build sources per `tokens.sources`; the validator owns `redis` and closes it."""
        store: TokenStore = RedisTokenStore(redis) if redis is not None else MemoryTokenStore()
        validator = cls(cfg.tokens, redis, store, GrantMapper(cfg.tokens.grant))
        for i, src in enumerate(cfg.tokens.sources):
            if isinstance(src, IntrospectionSource):
                tls = IdpTls(f"tokens.sources[{i}].tls", src.tls)
                intro = IntrospectionTokenSource(src, validator.session, validator.grants, tls)
                validator.sources.append(intro)
                validator.revocations.remote = validator.revocations.remote or intro
                validator.tls.append(tls)
            elif isinstance(src, JwtSource):
                tls = IdpTls(f"tokens.sources[{i}].tls", src.tls)
                validator.sources.append(
                    JwtTokenSource(src, validator.session, validator.grants, tls)
                )
                validator.tls.append(tls)
            else:
                validator.sources.append(StoreTokenSource(store, validator.grants))
            # Redis has its own outage backoff (redis_conn); the breaker guards the IdPs.
            threshold = 1_000_000 if src.type == "store" else 5
            validator.breakers.append(CircuitBreaker(threshold=threshold))
        return validator

    def session(self) -> aiohttp.ClientSession:
        """The one HTTP client session of every source (created by start())."""
        if self._session is None:
            raise RuntimeError("TokenValidator.start() was not awaited")
        return self._session

    async def start(self) -> None:
        """Open the HTTP session; subscribe to revocations (bounded wait)."""
        self._session = aiohttp.ClientSession(headers={"User-Agent": "oauth-gateway"})
        await self.revocations.start()

    async def close(self) -> None:
        """Stop background work; close the HTTP session and the Redis connection."""
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await self.revocations.close()
        for source in self.sources:
            await source.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.redis is not None:
            await self.redis.close()

    def refresh_tls(self, warn: bool = False) -> None:
        """Re-read the certificate files of the sources and of Redis when they changed (new
        connections use them); `warn`: say again which of them skip verification (a reload
        that keeps this validator)."""
        for tls in self.tls:
            tls.refresh(warn)
        if self.redis is not None:
            self.redis.refresh_tls(warn)

    def adopt_cache(self, old: TokenValidator) -> None:
        """Carry answers, revocations and an in-memory store over from the validator this one
        replaces on a reload (SPEC section 8: caches survive a reload)."""
        self.local.adopt(old.local)
        if isinstance(self.store, MemoryTokenStore) and isinstance(old.store, MemoryTokenStore):
            self.store.adopt(old.store)

    # -- the hot path ------------------------------------------------------------------------

    def peek(self, digest: TokenDigest, now: float) -> TokenInfo | None:
        """A fresh in-process answer at `now` (time.time()) without I/O: TokenInfo, None
        (unknown or stale), or raises InvalidTokenError for a cached negative."""
        return self.local.peek_raw(digest.key, now)

    async def validate(self, token: str, token_digest: TokenDigest | None = None) -> TokenInfo:
        """TokenInfo of an active token; raises InvalidTokenError or ValidatorUnavailableError."""
        digest = (token_digest or TokenDigest.of(token)).hex
        info = self.local.peek(digest)
        if info is not None:
            return info
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._lookup(token, digest))
            self._inflight[digest] = task
            task.add_done_callback(partial(self._lookup_done, digest))
        return await asyncio.shield(task)  # one caller giving up must not cancel the others

    def _lookup_done(self, digest: str, task: asyncio.Task[TokenInfo]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved even if every caller went away

    # -- the lookup behind a miss ------------------------------------------------------------

    async def _lookup(self, token: str, digest: str) -> TokenInfo:
        now = time.time()
        if self.local.is_revoked(digest, now):
            raise InvalidTokenError("revoked")
        known = self.local.get(digest)
        if known is not None and known.info is not None and _expired(known.info, now):
            self.local.drop(digest)
            raise InvalidTokenError("expired")  # no need to ask anyone
        fallback = _usable(known, now, self.cfg.cache)
        shared = await self._read_shared(digest, now)
        if shared is not None:
            if now < shared.fresh_until(self.cfg.cache):
                note("gateway.cache", "shared")  # a sampled request's lookup span says so
                self.local.put(digest, shared)
                if shared.info is None:
                    raise InvalidTokenError("cached_negative")
                return shared.info
            fallback = fallback or _usable(shared, now, self.cfg.cache)
        try:
            info = await self._ask_sources(token, digest)
        except ValidatorUnavailableError:
            if fallback is not None and self._stale_allowed():
                log.debug("stale_answer_served", token_id=digest[:12])
                note("gateway.cache", "stale")
                return fallback
            raise
        except InvalidTokenError as exc:
            await self._remember(digest, None, exc.reason)
            raise
        await self._remember(digest, info, "")
        return info

    async def _read_shared(self, digest: str, now: float) -> Entry | None:
        if self.shared is None:
            return None
        try:
            read = await self.shared.read(digest)
        except RedisUnavailableError:
            return None
        if self.local.is_revoked(digest, time.time()):
            raise InvalidTokenError("revoked")  # the message arrived during the read
        if read.revoked_until is not None:
            self.local.revoke(digest, read.revoked_until)
            raise InvalidTokenError("revoked")
        return read.entry

    async def _ask_sources(self, token: str, digest: str) -> TokenInfo:
        """The first source that knows the token answers; a negative after an unreachable
        source is not final (that source might know the token), so it is unavailability."""
        unreachable: ValidatorUnavailableError | None = None
        for source, breaker in zip(self.sources, self.breakers, strict=True):
            if not source.applies(token):
                continue
            if not breaker.allow():
                unreachable = unreachable or ValidatorUnavailableError("circuit_open")
                continue
            try:
                info = await source.lookup(token, digest)
            except ValidatorUnavailableError as exc:
                breaker.failure()
                self._note_down(source.name, exc.reason)
                unreachable = unreachable or exc
                continue
            except InvalidTokenError:
                breaker.success()
                self._note_up(source.name)
                if unreachable is not None:
                    raise ValidatorUnavailableError(unreachable.reason) from None
                raise
            breaker.success()
            self._note_up(source.name)
            if info is not None:
                return info
        if unreachable is not None:
            raise ValidatorUnavailableError(unreachable.reason)
        raise InvalidTokenError("unknown_token")

    async def _remember(self, digest: str, info: TokenInfo | None, reason: str) -> None:
        """Cache an answer in process and, for introspection and negatives, in Redis."""
        now = time.time()
        if reason == "revoked":
            return
        if info is not None and self.local.is_revoked(digest, now):
            raise InvalidTokenError("revoked")  # revoked while the lookup was in flight
        entry = positive_entry(info, now) if info else negative_entry(now)
        self.local.put(digest, entry)
        if self.shared is not None and (info is None or info.source == "introspection"):
            with contextlib.suppress(RedisUnavailableError):
                await self.shared.write(digest, entry)

    def _stale_allowed(self) -> bool:
        """No stale answers while Redis is down: revocations could not reach this process."""
        return self.redis is None or not self.redis.is_down

    def _note_down(self, source: str, reason: str) -> None:
        if source not in self._down:
            self._down.add(source)
            log.warning("token_source_unavailable", source=source, reason=reason)

    def _note_up(self, source: str) -> None:
        if source in self._down:
            self._down.discard(source)
            log.info("token_source_recovered", source=source)

    # -- issuing and revoking ----------------------------------------------------------------

    async def issue(
        self,
        grant: str,
        client_id: str,
        subject: str | None = None,
        scope: str = "",
        ttl_seconds: float | None = None,
        binding: Binding = NO_BINDING,
    ) -> str:
        """Mint an opaque token into the store (`grant` may be an alias such as `code`),
        restricted to audiences and bound to a key or certificate by `binding`."""
        canonical = self.grants.canonical(grant)
        return await issue(self.store, canonical, client_id, subject, scope, ttl_seconds, binding)

    async def revoke(
        self, token: str, info: TokenInfo | None = None, token_digest: TokenDigest | None = None
    ) -> None:
        """Revoke everywhere (SPEC section 6); Redis unreachable -> StoreUnavailableError."""
        digest = (token_digest or TokenDigest.of(token)).hex
        exp = await self._expiry(token, digest, info)
        await self.revocations.revoke(token, digest, exp)

    async def _expiry(self, token: str, digest: str, info: TokenInfo | None) -> float | None:
        """The token's exp, as far as it can be known without asking a remote source."""
        if info is not None and info.expires_at is not None:
            return info.expires_at
        entry = self.local.get(digest)
        if entry is not None and entry.info is not None:
            return entry.info.expires_at
        try:
            record = await self.store.lookup(digest)
        except StoreUnavailableError:
            record = None  # revoke() still applies locally, then reports the outage
        if record is not None and isinstance(record.get("exp"), int | float):
            return float(record["exp"])
        if is_jws(token):
            try:
                claims = jwt.decode(token, options={"verify_signature": False})
            except jwt.PyJWTError:
                return None
            exp = claims.get("exp")
            return float(exp) if isinstance(exp, int | float) else None
        return None


def _usable(entry: Entry | None, now: float, cfg: CacheConfig) -> TokenInfo | None:
    """A positive answer still within its stale_if_error limit."""
    if entry is None or entry.info is None or now >= entry.usable_until(cfg):
        return None
    return entry.info


def _expired(info: TokenInfo, now: float) -> bool:
    """Past exp by the cached answer (a JWT is re-verified instead: its source has a leeway)."""
    return info.source != "jwt" and info.expires_at is not None and info.expires_at <= now
