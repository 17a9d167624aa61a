"""Revocation (SPEC section 6): recorded in Redis, applied in every replica within a second.

`revoke` writes `{prefix}revoked:{hash}` (TTL until the token's exp), deletes the store record
and the shared cache entry, appends to the stream `{prefix}revocations:log` and PUBLISHes on
`{prefix}revocations`. Each process applies revocations to its in-process cache from the
pub/sub channel at once and, should a message be lost, from the stream polled every second,
so the request hot path never does I/O. The revoked set applies during a Redis outage too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.typing import KeyT, StreamIdT

from gateway.authn.cache import UNKNOWN_EXP_REVOCATION, LocalCache, SharedCache, TokenDigest
from gateway.authn.introspection import IntrospectionTokenSource
from gateway.authn.store import TokenStore, record_key
from gateway.config.models import CacheConfig
from gateway.errors import StoreUnavailableError, ValidatorUnavailableError
from gateway.redis_conn import RedisConnection, RedisUnavailableError

log = structlog.get_logger()

POLL_INTERVAL = 1.0
#: revocations outlive exp by this much, to cover a JWT source's leeway
EXP_MARGIN = 60.0
#: approximate length of the revocation stream (it only bridges lost pub/sub messages)
LOG_MAXLEN = 10_000
REMOTE_ATTEMPTS = 4
REMOTE_BACKOFF = 0.2  # seconds before the 2nd attempt, doubling after
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Revocations:
    """Records revocations and applies everyone's to this process's LocalCache."""

    def __init__(
        self,
        conn: RedisConnection | None,
        local: LocalCache,
        shared: SharedCache | None,
        store: TokenStore,
        remote: IntrospectionTokenSource | None,
        cfg: CacheConfig,
    ) -> None:
        self.conn = conn
        self.local = local
        self.shared = shared
        self.store = store
        self.remote = remote
        self.cfg = cfg
        self.poll_interval = POLL_INTERVAL
        self.subscribed = asyncio.Event()
        self._last_id = "0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    def until(self, exp: float | None, now: float) -> float:
        """How long a revocation must be kept: past the token's exp, or a day if exp is unknown."""
        if exp is None:
            return now + max(self.cfg.ttl + self.cfg.stale_if_error, UNKNOWN_EXP_REVOCATION)
        return max(exp, now) + EXP_MARGIN

    async def revoke(self, token: str, digest: str, exp: float | None) -> None:
        """Revoke everywhere; Redis configured but unreachable -> StoreUnavailableError."""
        until = self.until(exp, time.time())
        self.local.revoke(digest, until)  # applies here at once, whatever happens next
        if self.conn is None or self.shared is None:
            await self.store.delete(digest)
        else:
            await self._record(self.conn, self.shared, digest, until)
        log.info("token_revoked", token_id=TokenDigest(digest).id)
        if self.remote is not None and self.remote.cfg.revocation_url:
            self._spawn(self._revoke_remote(self.remote, token, digest))

    async def _record(
        self, conn: RedisConnection, shared: SharedCache, digest: str, until: float
    ) -> None:
        message = f"{digest} {until:.3f}"

        async def op(r: Redis) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.set(shared.revoked_key(digest), f"{until:.3f}", exat=int(until) + 1)
            pipe.delete(record_key(conn, digest))
            pipe.delete(shared.cache_key(digest))
            pipe.xadd(self.log_key, {"r": message}, maxlen=LOG_MAXLEN, approximate=True)
            await pipe.execute()
            await r.publish(self.channel, message)  # cluster pipelines refuse PUBLISH

        try:
            await conn.run(op, force=True)
        except RedisUnavailableError as exc:
            raise StoreUnavailableError("redis_unavailable") from exc

    @property
    def channel(self) -> str:
        """The pub/sub channel."""
        return self.conn.key("revocations") if self.conn else ""

    @property
    def log_key(self) -> str:
        """The stream bridging lost pub/sub messages."""
        return self.conn.key("revocations:log") if self.conn else ""

    def apply(self, message: str) -> None:
        """Apply a `"{hash} {until}"` message to the in-process cache."""
        digest, _, until_s = message.partition(" ")
        try:
            until = float(until_s)
        except ValueError:
            return
        if _HEX64.fullmatch(digest) and until > time.time():
            self.local.revoke(digest, until)

    # -- background work -------------------------------------------------------------------

    async def start(self, wait: float = 1.0) -> None:
        """Start the subscriber and the poller; wait (bounded) until subscribed."""
        self._tasks.append(asyncio.create_task(self._maintain(), name="revocations-poll"))
        if self.conn is None:
            return
        listen = self._listen(self.conn)
        self._tasks.append(asyncio.create_task(listen, name="revocations-listen"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), wait)

    async def close(self, drain: float = 2.0) -> None:
        """Stop the tasks; give pending RFC 7009 calls up to `drain` seconds."""
        pending = set(self._tasks)
        while pending:
            # cancelled again until they end: a library that swallows one cancellation (seen
            # with redis-py's pub/sub read over TLS) must not keep a listener alive for ever
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._tasks.clear()
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.local.purge(time.time())
            if self.conn is not None:
                with contextlib.suppress(RedisUnavailableError):
                    await self.poll_once()

    async def poll_once(self) -> None:
        """Apply the revocations logged since the last poll (bridges lost pub/sub messages)."""
        conn = self.conn
        if conn is None:
            return
        streams: dict[KeyT, StreamIdT] = {self.log_key: self._last_id}
        reply = await conn.run(lambda r: r.xread(streams, count=1000))
        for _stream, entries in _stream_entries(reply):
            for entry_id, fields in entries:
                self._last_id = entry_id
                self.apply(fields.get("r", ""))

    async def _listen(self, conn: RedisConnection) -> None:
        """Stay subscribed for the life of the process, resubscribing after any failure."""
        while True:
            try:
                await self._subscribe_and_read(conn)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                conn.record_failure(exc)
            except (RedisUnavailableError, redis_errors.RedisError):
                pass
            except Exception as exc:  # the listener must never die; the poller covers the gap
                log.error("revocation_listener_failed", error=type(exc).__name__)
            self.subscribed.clear()
            await asyncio.sleep(max(conn.retry_delay, 0.2))

    async def _subscribe_and_read(self, conn: RedisConnection) -> None:
        await conn.run(lambda r: r.ping(), force=True)  # connects (and maps a cluster) first
        pubsub: Any = conn.client.pubsub()  # redis-py's PubSub is partly untyped
        try:
            await pubsub.subscribe(self.channel)
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None:
                    continue
                if msg["type"] == "subscribe":
                    self.subscribed.set()
                    conn.record_success()
                    await self.poll_once()  # whatever was missed while not subscribed
                elif msg["type"] == "message":
                    self.apply(str(msg["data"]))
        finally:
            await pubsub.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _revoke_remote(remote: IntrospectionTokenSource, token: str, digest: str) -> None:
        """RFC 7009 call with retries; its failure is logged, never raised."""
        reason = ""
        for attempt in range(REMOTE_ATTEMPTS):
            try:
                await remote.revoke(token)
            except ValidatorUnavailableError as exc:
                reason = exc.reason
                if attempt + 1 < REMOTE_ATTEMPTS:
                    await asyncio.sleep(REMOTE_BACKOFF * 2**attempt)
                continue
            log.info(
                "remote_revocation_done", token_id=TokenDigest(digest).id, attempts=attempt + 1
            )
            return
        log.error("remote_revocation_failed", token_id=TokenDigest(digest).id, reason=reason)


def _stream_entries(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's reply as (stream, entries) pairs, for RESP2 (list) and RESP3 (dict) alike."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(stream, entries) for stream, entries in reply]
