"""The token store of SPEC section 9, and the `store` token source reading it.

Key `{key_prefix}token:{sha256 hex}` holds `{"client_id","sub","scope","grant_type","exp","iat"}`
with a Redis TTL ending at exp (SET ... EXAT). Without `redis:`, `MemoryTokenStore` keeps the
same records in process.
"""

from __future__ import annotations

import json
import math
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

    def to_json(self) -> str:
        """The record as Redis holds it."""
        return json.dumps(asdict(self), separators=(",", ":"))

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


def new_record(
    grant: str, client_id: str, subject: str | None, scope: str, ttl_seconds: float | None
) -> StoreRecord:
    """A record for a token minted now; `ttl_seconds` None uses the grant's default lifetime."""
    now = int(time.time())
    lifetime = default_lifetime(grant) if ttl_seconds is None else ttl_seconds
    if lifetime <= 0:
        raise ValueError("a token lifetime must be positive")
    scope = " ".join(scope.split())
    return StoreRecord(client_id, subject, scope, grant, now + math.ceil(lifetime), now)


async def issue(
    store: TokenStore,
    grant: str,
    client_id: str,
    subject: str | None = None,
    scope: str = "",
    ttl_seconds: float | None = None,
) -> str:
    """Mint a random opaque token into `store` and return it (the only time it exists in clear)."""
    token = secrets.token_urlsafe(32)
    await store.put(
        TokenDigest.of(token).hex, new_record(grant, client_id, subject, scope, ttl_seconds)
    )
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
        return asdict(record)

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
