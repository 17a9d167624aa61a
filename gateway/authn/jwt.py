"""The `jwt` token source: local verification of JWS access tokens (RFC 9068) against a JWKS.

Keys are fetched with aiohttp (never PyJWKClient, which blocks the loop) and parsed with
PyJWKSet. Only asymmetric algorithms from the configured allowlist are accepted, and a key is
used only for the family it belongs to, so `none` and HS256-signed-with-the-public-key fail.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog

from gateway.authn.grants import GrantMapper, info_from_claims
from gateway.authn.idp_tls import IdpTls
from gateway.authn.info import TokenInfo
from gateway.authn.introspection import SessionGetter
from gateway.config.models import JwtSource
from gateway.errors import InvalidTokenError, ValidatorUnavailableError
from gateway.tracecontext import ClientSpan, http_call_attributes

log = structlog.get_logger()

_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
#: the key type each accepted algorithm needs (symmetric and `none` are absent on purpose)
_KTY = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA",
    "PS512": "RSA", "ES256": "EC", "ES384": "EC", "ES512": "EC", "EdDSA": "OKP",
}  # fmt: skip
_AT_JWT = frozenset({"at+jwt", "application/at+jwt"})
#: unknown `kid`: the JWKS is fetched again at most this often
REFETCH_INTERVAL = 10.0
#: with no usable key at all, a failed fetch is retried at most this often
EMPTY_RETRY_INTERVAL = 1.0
#: keys older than this are refreshed (the old ones are kept if the refresh fails)
MAX_KEY_AGE = 3600.0

_CLAIM_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "algorithm_refused"),
)


def is_jws(token: str) -> bool:
    """Whether the token is shaped as a compact JWS: three base64url segments."""
    return _JWS.fullmatch(token) is not None


@dataclass(frozen=True, slots=True)
class _Key:
    jwk: jwt.PyJWK
    declared_alg: str | None  # the JWK's own `alg`, if it names one


class JwksCache:
    """The issuer's signing keys by `kid`, fetched on demand with a rate-limited refetch."""

    def __init__(
        self, url: str, timeout: float, session: SessionGetter, tls: IdpTls | None = None
    ) -> None:
        self.url = url
        self.tls = tls or IdpTls("jwks.tls", None)
        self.refetch_interval = REFETCH_INTERVAL
        self.max_key_age = MAX_KEY_AGE
        self.fetches = 0
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: dict[str | None, list[_Key]] = {}
        self._loaded_at: float | None = None
        self._tried_at = -1e9
        self._inflight: asyncio.Future[None] | None = None
        self._span_attributes = http_call_attributes("GET", url)

    async def keys_for(self, kid: str | None) -> list[_Key]:
        """Candidate keys for `kid` (every key when the token names none)."""
        now = time.monotonic()
        if self._loaded_at is None:
            if now - self._tried_at >= EMPTY_RETRY_INTERVAL or self._inflight:
                await self._refresh()
            if self._loaded_at is None:
                raise ValidatorUnavailableError("jwks_unavailable")
            return self._lookup(kid)
        due = now - self._tried_at >= self.refetch_interval
        if due and now - self._loaded_at >= self.max_key_age:
            self._start_fetch()  # in the background: the keys held stay valid meanwhile
        if not self._lookup(kid) and (due or self._inflight is not None):
            try:
                await self._refresh()
            except ValidatorUnavailableError:
                if not self._lookup(kid):
                    raise  # an unknown kid cannot be judged while the JWKS is unreachable
        return self._lookup(kid)

    def _lookup(self, kid: str | None) -> list[_Key]:
        if kid is None:
            return [k for keys in self._keys.values() for k in keys]
        return self._keys.get(kid, [])

    def _start_fetch(self) -> asyncio.Future[None]:
        """One fetch for every concurrent caller; failures keep the keys already held."""
        if self._inflight is None:
            self._tried_at = time.monotonic()
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetched)
        return self._inflight

    async def _refresh(self) -> None:
        await asyncio.shield(self._start_fetch())

    async def close(self) -> None:
        """Cancel a fetch in progress."""
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)

    def _fetched(self, fut: asyncio.Future[None]) -> None:
        self._inflight = None
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            reason = getattr(exc, "reason", type(exc).__name__)
            log.warning("jwks_fetch_failed", url=self.url, reason=reason)

    async def _fetch(self) -> None:
        self.fetches += 1
        with ClientSpan("GET", self._span_attributes):  # made for a sampled request: a span
            doc = await self._download()
        try:
            jwks = jwt.PyJWKSet.from_dict(doc)
        except jwt.PyJWTError as exc:
            raise ValidatorUnavailableError("jwks_invalid") from exc
        keys: dict[str | None, list[_Key]] = {}
        for key in jwks.keys:
            if key.key_type in ("RSA", "EC", "OKP") and key.public_key_use in (None, "sig"):
                declared = _declared_alg(doc, key.key_id)
                keys.setdefault(key.key_id, []).append(_Key(key, declared))
        self._keys = keys
        self._loaded_at = time.monotonic()
        log.info("jwks_loaded", url=self.url, keys=sum(len(v) for v in keys.values()))

    async def _download(self) -> dict[str, Any]:
        try:
            async with self._session().get(
                self.url, timeout=self._timeout, ssl=self.tls.ssl
            ) as resp:
                self.tls.succeeded()
                resp.raise_for_status()
                doc = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            outage = self.tls.failure(exc, self.url)  # an untrusted IdP is an outage, not a 401
            if outage is not None:
                raise outage from exc
            raise ValidatorUnavailableError("jwks_unavailable") from exc
        if not isinstance(doc, dict):
            raise ValidatorUnavailableError("jwks_invalid")
        return doc


def _declared_alg(doc: dict[str, Any], kid: str | None) -> str | None:
    for raw in doc.get("keys", []):
        if isinstance(raw, dict) and raw.get("kid") == kid and isinstance(raw.get("alg"), str):
            return str(raw["alg"])
    return None


class JwtTokenSource:
    """Verifies JWS tokens locally; other token shapes are not its business."""

    name = "jwt"

    def __init__(
        self,
        cfg: JwtSource,
        session: SessionGetter,
        grants: GrantMapper,
        tls: IdpTls | None = None,
    ) -> None:
        self.cfg = cfg
        self.grants = grants
        self.jwks = JwksCache(
            cfg.jwks_url, cfg.timeout, session, tls or IdpTls("jwks.tls", cfg.tls)
        )
        self._algorithms = frozenset(a for a in cfg.algorithms if a in _KTY)
        aud = cfg.audience
        self._audience = aud if isinstance(aud, str) or aud is None else list(aud)
        # without `audience`, `aud` is read (for routes' `resource`) but not required
        self._options = (
            {"require": ["exp", "iss", "aud"]}
            if aud is not None
            else {"require": ["exp", "iss"], "verify_aud": False}
        )

    def applies(self, token: str) -> bool:
        """Only tokens shaped as a JWS."""
        return is_jws(token)

    async def close(self) -> None:
        """Stop a JWKS fetch in progress."""
        await self.jwks.close()

    async def lookup(self, token: str, digest: str) -> TokenInfo | None:
        """TokenInfo for a verified token; bad signature or claims -> InvalidTokenError."""
        header = self._header(token)
        if header is None:
            return None  # not a JWT after all: let the next source judge it
        alg = self._check_header(header)
        kid = header.get("kid")
        keys = await self.jwks.keys_for(kid if isinstance(kid, str) else None)
        claims = self._verify(token, alg, [k for k in keys if _fits(k, alg)])
        return info_from_claims(claims, self.grants.from_claims(claims), self.name)

    @staticmethod
    def _header(token: str) -> dict[str, Any] | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        return header if isinstance(header, dict) else None

    def _check_header(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidTokenError("algorithm_refused")
        if self.cfg.require_typ:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in _AT_JWT:
                raise InvalidTokenError("wrong_typ")
        return alg

    def _verify(self, token: str, alg: str, keys: list[_Key]) -> dict[str, Any]:
        if not keys:
            raise InvalidTokenError("unknown_key")
        error: jwt.PyJWTError = jwt.InvalidSignatureError()
        for key in keys:  # several only when the token names no kid
            try:
                return jwt.decode(
                    token, key=key.jwk.key, algorithms=[alg], audience=self._audience,
                    issuer=self.cfg.issuer, leeway=self.cfg.leeway,
                    options=self._options,  # type: ignore[arg-type]
                )  # fmt: skip
            except jwt.InvalidSignatureError as exc:
                error = exc
            except jwt.PyJWTError as exc:
                raise InvalidTokenError(_reason(exc)) from exc
        raise InvalidTokenError(_reason(error)) from error


def _fits(key: _Key, alg: str) -> bool:
    """A key verifies only its own family, and only its declared alg when it has one."""
    if key.declared_alg is not None and key.declared_alg != alg:
        return False
    return key.jwk.key_type == _KTY[alg]


def _reason(exc: jwt.PyJWTError) -> str:
    for cls, reason in _CLAIM_ERRORS:
        if isinstance(exc, cls):
            return reason
    return "invalid_jwt"
