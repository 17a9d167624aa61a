"""The token store of SPEC section 9, and the `store` token source reading it.

Key `{key_prefix}token:{sha256 hex}` holds `{"client_id","sub","scope","grant_type","exp","iat"}`
(plus `aud` and `cnf` for audience-restricted and bound tokens) with a Redis TTL ending at exp
(SET ... EXAT). Without `redis:`, `MemoryTokenStore` keeps the
same records in process.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from gateway.authn.cache import TokenDigest
from gateway.authn.grants import GrantMapper, default_lifetime, info_from_claims
from gateway.authn.info import TokenInfo
from gateway.errors import InvalidTokenError, StoreUnavailableError, ValidatorUnavailableError
from gateway.redis_conn import RedisConnection, RedisUnavailableError


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """One stored token (SPEC section 9); `exp`/`iat` are Unix seconds."""

    client_id: str | None
    sub: str | None
    scope: str
    grant_type: str
    exp: int
    iat: int
    aud: tuple[str, ...] | None = None  # the resources it is for (RFC 8707); None: any
    cnf: dict[str, str] | None = None  # {"jkt": ...} (DPoP) / {"x5t#S256": ...} (certificate)

    def fields(self) -> dict[str, Any]:
        """The record's JSON fields; `aud` and `cnf` only when set (a single audience as a
        string, as most issuers write it)."""
        doc = asdict(self)
        if self.aud is None:
            del doc["aud"]
        else:
            doc["aud"] = self.aud[0] if len(self.aud) == 1 else list(self.aud)
        if self.cnf is None:
            del doc["cnf"]
        return doc

    def to_json(self) -> str:
        """The record as Redis holds it."""
        return json.dumps(self.fields(), separators=(",", ":"))

    @staticmethod
    def parse(raw: str | bytes) -> dict[str, Any] | None:
        """The raw fields of a stored record (issuers may add fields), or None if not JSON."""
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


class TokenStore(Protocol):
    """Where opaque tokens live, by hash."""

    async def put(self, digest: str, record: StoreRecord) -> None:
        """Store a record until its exp."""

    async def lookup(self, digest: str) -> dict[str, Any] | None:
        """The record's fields, or None; raises StoreUnavailableError."""

    async def delete(self, digest: str) -> None:
        """Forget a token; raises StoreUnavailableError."""


@dataclass(frozen=True, slots=True)
class Binding:
    """What a minted token is restricted to: audiences (RFC 8707) and a key or certificate
    thumbprint (RFC 9449 `jkt`, RFC 8705 `x5t#S256`), each base64url SHA-256."""

    audience: tuple[str, ...] = ()
    jkt: str | None = None
    x5t: str | None = None

    def cnf(self) -> dict[str, str] | None:
        cnf: dict[str, str] = {}
        if self.jkt:
            cnf["jkt"] = self.jkt
        if self.x5t:
            cnf["x5t#S256"] = self.x5t
        return cnf or None


NO_BINDING = Binding()
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")


def check_thumbprint(value: str, what: str) -> str:
    """A base64url SHA-256 thumbprint (43 characters, no padding); ValueError otherwise."""
    if not _THUMBPRINT.fullmatch(value):
        raise ValueError(f"{what} must be a base64url SHA-256 thumbprint (43 characters)")
    return value


def new_record(
    grant: str,
    client_id: str,
    subject: str | None,
    scope: str,
    ttl_seconds: float | None,
    binding: Binding = NO_BINDING,
) -> StoreRecord:
    """A record for a token minted now; `ttl_seconds` None uses the grant's default lifetime."""
    now = int(time.time())
    lifetime = default_lifetime(grant) if ttl_seconds is None else ttl_seconds
    if lifetime <= 0:
        raise ValueError("a token lifetime must be positive")
    scope = " ".join(scope.split())
    if binding.jkt is not None:
        check_thumbprint(binding.jkt, "a DPoP key thumbprint (jkt)")
    if binding.x5t is not None:
        check_thumbprint(binding.x5t, "a certificate thumbprint (x5t#S256)")
    return StoreRecord(
        client_id, subject, scope, grant, now + math.ceil(lifetime), now,
        binding.audience or None, binding.cnf(),
    )  # fmt: skip


async def issue(
    store: TokenStore,
    grant: str,
    client_id: str,
    subject: str | None = None,
    scope: str = "",
    ttl_seconds: float | None = None,
    binding: Binding = NO_BINDING,
) -> str:
    """Mint a random opaque token into `store` and return it (the only time it exists in clear)."""
    token = secrets.token_urlsafe(32)
    record = new_record(grant, client_id, subject, scope, ttl_seconds, binding)
    await store.put(TokenDigest.of(token).hex, record)
    return token


def record_key(conn: RedisConnection, digest: str) -> str:
    """`{key_prefix}token:{hash}`: where a token's record lives (SPEC section 9)."""
    return conn.key(f"token:{digest}")


class RedisTokenStore:
    """Records in Redis, shared by every replica and by external issuers."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn

    def key(self, digest: str) -> str:
        """`{key_prefix}token:{hash}`."""
        return record_key(self.conn, digest)

    async def put(self, digest: str, record: StoreRecord) -> None:
        """SET with EXAT at the token's exp."""
        data = record.to_json()
        try:
            await self.conn.run(
                lambda r: r.set(self.key(digest), data, exat=record.exp), force=True
            )
        except RedisUnavailableError as exc:
            raise StoreUnavailableError("redis_unavailable") from exc

    async def lookup(self, digest: str) -> dict[str, Any] | None:
        """The record's fields, or None."""
        try:
            raw = await self.conn.run(lambda r: r.get(self.key(digest)))
        except RedisUnavailableError as exc:
            raise StoreUnavailableError("redis_unavailable") from exc
        return None if raw is None else StoreRecord.parse(raw)

    async def delete(self, digest: str) -> None:
        """DEL the record."""
        try:
            await self.conn.run(lambda r: r.delete(self.key(digest)), force=True)
        except RedisUnavailableError as exc:
            raise StoreUnavailableError("redis_unavailable") from exc


class MemoryTokenStore:
    """Records in this process only (no `redis:` configured): the demo and single-process use."""

    def __init__(self) -> None:
        self._records: dict[str, StoreRecord] = {}

    def adopt(self, other: MemoryTokenStore) -> None:
        """Take over another store's records (a reload replacing the validator)."""
        self._records.update(other._records)

    async def put(self, digest: str, record: StoreRecord) -> None:
        """Keep the record until its exp."""
        self._records[digest] = record

    async def lookup(self, digest: str) -> dict[str, Any] | None:
        """The record's fields, or None once expired."""
        record = self._records.get(digest)
        if record is None:
            return None
        if record.exp <= time.time():
            del self._records[digest]
            return None
        return record.fields()

    async def delete(self, digest: str) -> None:
        """Forget the record."""
        self._records.pop(digest, None)


class StoreTokenSource:
    """The `store` source: knows the tokens in the store; unknown hashes go to the next source."""

    name = "store"

    def __init__(self, store: TokenStore, grants: GrantMapper) -> None:
        self.store = store
        self.grants = grants

    def applies(self, token: str) -> bool:
        """Every token may be in the store."""
        return True

    async def close(self) -> None:
        """Nothing of its own to release (the HTTP session belongs to the validator)."""

    async def lookup(self, token: str, digest: str) -> TokenInfo | None:
        """The record's TokenInfo; None if unknown; Redis down -> ValidatorUnavailableError."""
        try:
            record = await self.store.lookup(digest)
        except StoreUnavailableError as exc:
            raise ValidatorUnavailableError("store_unavailable") from exc
        if record is None:
            return None
        info = info_from_claims(record, self.grants.from_record(record), self.name)
        if info.expires_at is not None and info.expires_at <= time.time():
            raise InvalidTokenError("expired")
        return info
