"""The two cache layers of token answers, keyed by sha256(token) hex (never the token).

`LocalCache` is the in-process LRU read synchronously on the hot path; it also holds the set
of revoked hashes. `SharedCache` is the Redis layer shared by every replica.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Final

from redis.asyncio import Redis

from gateway.authn.info import TokenInfo, audience_set, scope_set
from gateway.config.models import CacheConfig
from gateway.errors import InvalidTokenError
from gateway.redis_conn import RedisConnection

# Revocations whose token lifetime is unknown are kept this long (at least ttl + stale_if_error).
UNKNOWN_EXP_REVOCATION: Final = 86400.0


class TokenDigest:
    """The one identity of a token: its SHA-256, computed once per token.

    `hex` names it in Redis, the token store and the revoked set; `key` (its first 16 bytes as
    an integer) keys the in-process cache; `id` (12 hex digits) is all that logs may show."""

    __slots__ = ("hex", "key")

    def __init__(self, hex_digest: str) -> None:
        self.hex = hex_digest
        self.key = _key(hex_digest)

    @staticmethod
    def of(token: str) -> TokenDigest:
        """The digest of a token."""
        return TokenDigest(sha256(token.encode()).hexdigest())

    @property
    def id(self) -> str:
        """What logs may show of a token."""
        return self.hex[:12]


def _key(digest: str) -> int:
    """The in-process cache key of a hex digest: its first 16 bytes as one integer (48 bytes of
    memory where a 16-byte `bytes` takes 64, and cheaper to hash in the dict)."""
    return int(digest[:32], 16)


@dataclass(slots=True)
class Entry:
    """A cached answer: `info` None is a negative one. Its limits are derived from
    `cached_at`, the token's exp and the cache config (the cache's, passed in) rather than
    stored: memory per cached token is what lets one process hold 100,000s of them."""

    info: TokenInfo | None
    cached_at: float

    def fresh_until(self, cfg: CacheConfig) -> float:
        """Positive: `ttl`, never past exp; negative: `negative_ttl`."""
        info = self.info
        if info is None:
            return self.cached_at + cfg.negative_ttl
        until = self.cached_at + cfg.ttl
        exp = info.expires_at
        return until if exp is None or until < exp else exp

    def usable_until(self, cfg: CacheConfig) -> float:
        """While sources are down: `stale_if_error` more, never past exp (negatives: fresh)."""
        info = self.info
        if info is None:
            return self.fresh_until(cfg)
        until = self.cached_at + cfg.ttl + cfg.stale_if_error
        exp = info.expires_at
        return until if exp is None or until < exp else exp


def positive_entry(info: TokenInfo, cached_at: float) -> Entry:
    """Fresh for `ttl`, usable while sources are down for `stale_if_error` more; never past exp."""
    return Entry(info, cached_at)


def negative_entry(cached_at: float) -> Entry:
    """A "not valid" answer, reused for `negative_ttl`."""
    return Entry(None, cached_at)


class LocalCache:
    """In-process LRU of answers (at most `max_entries`), plus the revoked-hash set.

    Entries are keyed by the first 16 bytes of the digest, as an integer (`TokenDigest.key`): a
    fraction of the memory of the hex form, and colliding with a cached token would still take
    a 128-bit second preimage of SHA-256. The dict's insertion order is the LRU order.
    """

    def __init__(self, cfg: CacheConfig) -> None:
        self.cfg = cfg
        self.entries: dict[int, Entry] = {}
        self.revoked: dict[str, float] = {}  # hex hash -> keep until (the token's exp)
        # The key known to be last in `entries` (-1: not known). A client resending one token
        # finds it already most recently used: no delete and re-insert per request.
        self._last = -1

    def peek_raw(self, key: int, now: float) -> TokenInfo | None:
        """The hot path: a fresh positive answer at `now`, or None; a fresh negative raises."""
        entries = self.entries
        entry = entries.get(key)
        if entry is None or now >= entry.fresh_until(self.cfg):
            return None
        if key != self._last:
            del entries[key]
            entries[key] = entry  # most recently used
            self._last = key
        if entry.info is None:
            raise InvalidTokenError("cached_negative")
        return entry.info

    def peek(self, digest: str) -> TokenInfo | None:
        """peek_raw() by hex digest."""
        return self.peek_raw(_key(digest), time.time())

    def get(self, digest: str) -> Entry | None:
        """The entry, fresh or not."""
        return self.entries.get(_key(digest))

    def put(self, digest: str, entry: Entry) -> None:
        """Store an answer unless the hash is revoked; evict the least recently used."""
        if entry.info is not None and digest in self.revoked:
            return
        key = _key(digest)
        entries = self.entries
        entries.pop(key, None)
        entries[key] = entry
        self._last = key
        while len(entries) > self.cfg.max_entries:
            del entries[next(iter(entries))]
        if not entries:  # max_entries 0: what was just put is gone again
            self._last = -1

    def drop(self, digest: str) -> None:
        """Forget the answer for a hash."""
        self._forget(_key(digest))

    def _forget(self, key: int) -> None:
        self.entries.pop(key, None)
        if key == self._last:
            self._last = -1

    def adopt(self, other: LocalCache) -> None:
        """Take over another cache's answers and revocations (config reload)."""
        for digest, until in other.revoked.items():
            self.revoke(digest, until)
        self.entries.update(other.entries)
        self._last = -1
        for digest in self.revoked:
            self.entries.pop(_key(digest), None)

    def revoke(self, digest: str, until: float) -> None:
        """Drop the answer and refuse the hash until `until` (the token's exp)."""
        self._forget(_key(digest))
        if until > self.revoked.get(digest, 0.0):
            self.revoked[digest] = until

    def is_revoked(self, digest: str, now: float) -> bool:
        """Whether the hash is in the revoked set (and the revocation still matters)."""
        until = self.revoked.get(digest)
        return until is not None and now < until

    def purge(self, now: float) -> None:
        """Forget revocations of tokens that have expired anyway."""
        for digest in [d for d, until in self.revoked.items() if until <= now]:
            del self.revoked[digest]


def entry_to_json(entry: Entry) -> str:
    """Serialise an entry for the shared layer."""
    doc: dict[str, Any] = {"active": entry.info is not None, "at": entry.cached_at}
    if entry.info is not None:
        i = entry.info
        doc.update(
            sub=i.subject, client_id=i.client_id, scope=i.scope, grant=i.grant,
            exp=i.expires_at, source=i.source,
        )  # fmt: skip
        if i.audience:
            doc["aud"] = sorted(i.audience)
        cnf = i.cnf
        if cnf is not None:
            doc["cnf"] = cnf
    return json.dumps(doc, separators=(",", ":"))


def entry_from_json(raw: str) -> Entry | None:
    """Parse a shared entry; None when it is not one of ours."""
    try:
        doc = json.loads(raw)
        cached_at = float(doc["at"])
        if not doc["active"]:
            return negative_entry(cached_at)
        cnf = doc.get("cnf") or {}
        info = TokenInfo(
            subject=doc.get("sub"), client_id=doc.get("client_id"), scope=doc["scope"],
            scopes=scope_set(doc["scope"]), grant=doc["grant"], expires_at=doc.get("exp"),
            source=doc.get("source", ""),
            audience=audience_set(doc.get("aud")), jkt=cnf.get("jkt"), x5t=cnf.get("x5t#S256"),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return positive_entry(info, cached_at)


@dataclass(slots=True)
class SharedRead:
    """What Redis knows of a hash: a cached answer and/or a revocation mark."""

    entry: Entry | None
    revoked_until: float | None


class SharedCache:
    """The Redis layer: `{prefix}cache:{hash}` answers and `{prefix}revoked:{hash}` marks."""

    def __init__(self, conn: RedisConnection, cfg: CacheConfig) -> None:
        self.conn = conn
        self.cfg = cfg

    def cache_key(self, digest: str) -> str:
        """Key of the cached answer."""
        return self.conn.key(f"cache:{digest}")

    def revoked_key(self, digest: str) -> str:
        """Key of the revocation mark."""
        return self.conn.key(f"revoked:{digest}")

    async def read(self, digest: str) -> SharedRead:
        """Both keys in one round trip; raises RedisUnavailableError."""

        async def op(r: Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(self.cache_key(digest))
            pipe.get(self.revoked_key(digest))
            return await pipe.execute()

        cached, revoked = await self.conn.run(op)
        entry = entry_from_json(cached) if isinstance(cached, str) else None
        until = _float(revoked) if revoked is not None else None
        return SharedRead(entry, until)

    async def write(self, digest: str, entry: Entry) -> None:
        """Store an answer until its usable limit; raises RedisUnavailableError."""
        ms = int((entry.usable_until(self.cfg) - time.time()) * 1000)
        if ms <= 0:
            return
        data = entry_to_json(entry)
        await self.conn.run(lambda r: r.set(self.cache_key(digest), data, px=ms))


def _float(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return time.time() + UNKNOWN_EXP_REVOCATION
