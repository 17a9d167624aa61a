"""Rate limits keyed by the validated identity (SPEC section 14): token buckets, GCRA-style.

A route's policies are compiled once onto its `Route` (`RoutePolicies`); the pipeline asks
`RateLimiter.admit()` after authentication and authorization, before forwarding.

Without Redis each process keeps its own buckets: GCRA (a theoretical arrival time per key,
advanced by `period / N` per request, refused when it would run more than `burst` requests
ahead of now). With Redis the bucket lives in Redis and replicas take **leases** from it: one
script call takes up to `lease` tokens out of the shared bucket at once (atomically, with
Redis' clock), and this process spends them without any I/O; a background refill is started
when a lease runs low, and unspent tokens go back to the shared bucket when a key goes idle.
A request waits for Redis only when its key has no leased token left (its first request in this
process, or a key at its limit). Every admitted request spent a token taken out of the shared
bucket, so replicas together never admit more than the shared bucket allows (no overshoot);
what leases cost is the opposite: up to `lease` tokens a replica holds may be refused to
another replica's requests for up to a second (docs/operations.md, "Rate limits").

While Redis is unreachable (`RedisConnection.is_down`, during its backoff) each process limits
on its own local buckets, counted in `gateway_rate_limit_local_total{policy}`; when Redis
answers again the shared buckets take over.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import time
from collections.abc import Iterable
from typing import Any, Final

import structlog
from redis.exceptions import NoScriptError

from gateway.authn.info import TokenInfo
from gateway.errors import RateLimitedError
from gateway.http.exchange import Exchange
from gateway.metrics import RateLimitStats
from gateway.ratelimit.policy import LimitPolicy, RoutePolicies
from gateway.redis_conn import RedisConnection, RedisUnavailableError

log = structlog.get_logger("gateway")

_monotonic: Final = time.monotonic
#: how long unspent leased tokens stay with an idle key before they go back to Redis
LEASE_IDLE: Final = 1.0
#: the sweep: unspent leases returned, idle buckets (full again) forgotten
SWEEP_EVERY: Final = 0.5
#: a lease lasts about this long at the policy's full rate (more tokens: fewer Redis calls)
LEASE_SECONDS: Final = 0.1
#: at most this share of the burst is leased at once (the rest stays for other replicas)
LEASE_SHARE: Final = 8
LEASE_MAX: Final = 1000
#: attempts of a waiting request to get a leased token before it is refused
WAIT_ATTEMPTS: Final = 3
#: local buckets kept at most (per process); beyond, the least recently used are forgotten
MAX_BUCKETS: Final = 200_000

# The shared bucket in Redis: its theoretical arrival time (TAT, Redis' clock, microseconds).
# want > 0: take up to `want` tokens; want < 0: give `-want` unspent tokens back; want = 0:
# read. Returns {tokens granted, TAT - now}. All integers (Lua's %.14g would round a TAT).
LEASE_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local granted = 0
if want > 0 then
  local avail = math.floor((now + burst * interval - tat) / interval)
  granted = math.max(0, math.min(want, avail))
  tat = tat + granted * interval
elseif want < 0 then
  tat = math.max(now, tat + want * interval)
end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX',
             math.floor((tat - now) / 1000) + 1000)
elseif want ~= 0 then
  redis.call('DEL', KEYS[1])
end
return {granted, tat - now}
"""
_SCRIPT_SHA: Final = hashlib.sha1(LEASE_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class Bucket:
    """One key's bucket in this process."""

    def __init__(self, key: str, policy: str, interval: float, burst: int) -> None:
        self.key = key
        self.policy = policy
        self.interval = interval
        self.burst = burst
        self.lease_size = lease_size(interval, burst)
        #: local GCRA: the theoretical arrival time (monotonic), without Redis or while it is down
        self.tat = 0.0
        #: tokens taken from the shared bucket and not spent yet
        self.lease = 0
        #: the shared bucket's TAT as Redis last told it (converted to this process's clock)
        self.shared_tat = 0.0
        #: Redis said it had no token before this time: refused here without asking
        self.empty_until = 0.0
        self.refill: asyncio.Future[bool] | None = None  # a Redis call in flight
        self.waiting = 0
        self.used_at = 0.0
        self.redis_key = ""


def lease_size(interval: float, burst: int) -> int:
    """Tokens taken from Redis at once: ~LEASE_SECONDS at the full rate, at most a
    LEASE_SHARE-th of the burst, at least 1."""
    by_rate = int(LEASE_SECONDS / interval)
    return max(1, min(by_rate, burst // LEASE_SHARE, LEASE_MAX))


class RateLimiter:
    """Every bucket of this process; survives reloads (the runtime hands it on)."""

    def __init__(self, stats: RateLimitStats, redis: RedisConnection | None = None) -> None:
        self.stats = stats
        self.redis = redis
        self.trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.buckets: dict[str, Bucket] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._local_logged = False

    def configure(self, redis: RedisConnection | None, trusted: Iterable[str]) -> None:
        """The Redis connection and trusted proxies of the current config."""
        if redis is not self.redis:
            for b in self.buckets.values():
                b.lease = 0  # taken from another Redis (or none)
        self.redis = redis
        self.trusted = [ipaddress.ip_network(c) for c in trusted]

    # ------------------------------------------------------------------ the request path
    def admit(self, ex: Exchange, limits: RoutePolicies, info: TokenInfo | None) -> bool:
        """True: allowed now (the `RateLimit` header is set on the exchange). False: a key
        needs Redis first: the caller awaits `wait()`. Raises RateLimitedError when over."""
        now = _monotonic()
        buckets = self._buckets(ex, limits, info, now)
        if not buckets:
            return True
        redis = self.redis
        if redis is None or (redis.is_down and redis.retry_delay > 0):
            return self._admit_local(ex, limits, buckets, now, redis is not None)
        for b in buckets:
            if b.lease < 1 and now < b.empty_until:
                self._refuse(ex, limits, buckets, b, now)
        for b in buckets:
            if b.lease < 1:
                return False
        header = ""
        for b in buckets:
            b.lease -= 1
            b.used_at = now
            if b.lease * 2 < b.lease_size and b.refill is None:
                self._start_refill(b)
            header = _member(header, b.policy, self._shared_state(b, now))
        ex.answer_headers += "ratelimit: " + header + "\r\n"
        return True

    async def wait(self, ex: Exchange, limits: RoutePolicies, info: TokenInfo | None) -> None:
        """admit() for a request whose key had no leased token: refill from Redis, then
        decide (RateLimitedError when over)."""
        for _ in range(WAIT_ATTEMPTS):
            now = _monotonic()
            for b in self._buckets(ex, limits, info, now):
                if b.lease < 1 and now >= b.empty_until and not await self._refilled(b):
                    # Redis did not answer (down, or refusing the script): this process's counts
                    now = _monotonic()
                    self._admit_local(ex, limits, self._buckets(ex, limits, info, now), now, True)
                    return
            if self.admit(ex, limits, info):
                return
        # other requests of this key took every token Redis handed out: the key is at its limit
        now = _monotonic()
        buckets = self._buckets(ex, limits, info, now)
        hot = next((b for b in buckets if b.lease < 1), buckets[0])
        hot.empty_until = max(hot.empty_until, now + hot.interval)
        self._refuse(ex, limits, buckets, hot, now)

    async def acquire(self, ex: Exchange, limits: RoutePolicies, info: TokenInfo | None) -> None:
        """admit(), waiting for Redis when it must (tasks: forward-auth, after a lookup)."""
        if not self.admit(ex, limits, info):
            await self.wait(ex, limits, info)

    # ------------------------------------------------------------------------ buckets
    def _buckets(
        self, ex: Exchange, limits: RoutePolicies, info: TokenInfo | None, now: float
    ) -> list[Bucket]:
        ip = self.client_ip(ex) if limits.uses_ip else ""
        out: list[Bucket] = []
        for p in limits.policies:
            interval, burst = p.interval, p.burst
            if p.needs_identity:
                if info is None:
                    continue  # a preflight let through without a token: no identity to key on
                if p.overrides:
                    ov = p.overrides.get(info.client_id or "")
                    if ov is not None:
                        interval, burst = ov
            key = _key(p, limits.route, info, ip)
            b = self.buckets.get(key)
            if b is None:
                b = self._new_bucket(key, p.name, interval, burst)
            elif b.interval != interval or b.burst != burst:  # a reload changed the policy
                b.interval, b.burst = interval, burst
                b.lease_size = lease_size(interval, burst)
            b.used_at = now
            out.append(b)
        return out

    def _new_bucket(self, key: str, policy: str, interval: float, burst: int) -> Bucket:
        b = Bucket(key, policy, interval, burst)
        self.buckets[key] = b
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return b

    def client_ip(self, ex: Exchange) -> str:
        """The peer, or when the peer is a trusted proxy the client `X-Forwarded-For` names:
        the last address not itself a trusted proxy (what a client writes before the first
        trusted hop cannot choose it)."""
        peer = ex.client_ip
        if not self.trusted or not self._is_trusted(peer):
            return peer
        hops: list[str] = []
        for name, value in ex.head.headers:
            if name == b"x-forwarded-for":
                hops += value.decode("latin-1").split(",")
        for hop in reversed(hops):
            addr = hop.strip()
            if addr and not self._is_trusted(addr):
                return addr
        return peer

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in self.trusted)

    # ------------------------------------------------------------------------ local
    def _admit_local(
        self,
        ex: Exchange,
        limits: RoutePolicies,
        buckets: list[Bucket],
        now: float,
        redis_down: bool,
    ) -> bool:
        """GCRA on this process's counts (no Redis configured, or Redis unreachable)."""
        if redis_down:
            self._note_local(buckets)
        for b in buckets:
            if max(b.tat, now) + b.interval - now > b.burst * b.interval + 1e-9:
                self._refuse(ex, limits, buckets, b, now)
        header = ""
        for b in buckets:
            b.tat = max(b.tat, now) + b.interval
            header = _member(header, b.policy, self._local_state(b, now))
        ex.answer_headers += "ratelimit: " + header + "\r\n"
        return True

    def _note_local(self, buckets: list[Bucket]) -> None:
        if not self._local_logged:
            self._local_logged = True
            log.warning("rate_limit_local", reason="redis_unavailable")
        local = self.stats.local
        for b in buckets:
            local[b.policy] = local.get(b.policy, 0) + 1

    # ------------------------------------------------------------------------ answers
    def _local_state(self, b: Bucket, now: float) -> tuple[float, float]:
        """(tokens now, seconds until full) of a local bucket."""
        ahead = max(0.0, b.tat - now)
        return b.burst - ahead / b.interval, ahead

    def _shared_state(self, b: Bucket, now: float) -> tuple[float, float]:
        """(tokens now, seconds until full) of a shared bucket: this process's lease and what
        Redis had left when it last answered, refilled since."""
        ahead = max(0.0, b.shared_tat - now)
        tokens = min(float(b.burst), b.lease + b.burst - ahead / b.interval)
        return tokens, (b.burst - tokens) * b.interval

    def _refuse(
        self,
        ex: Exchange,
        limits: RoutePolicies,
        buckets: list[Bucket],
        over: Bucket,
        now: float,
    ) -> None:
        """Raise the 429 for `over` with every policy's headers."""
        local = self.redis is None or (self.redis.is_down and self.redis.retry_delay > 0)
        policy = ""
        state = ""
        for b in buckets:
            q = str(b.burst)
            w = str(max(1, math.ceil(b.burst * b.interval - 1e-9)))
            policy += (", " if policy else "") + f'"{b.policy}";q={q};w={w}'
            tokens, full = self._local_state(b, now) if local else self._shared_state(b, now)
            if b is over:
                tokens = 0.0
            state = _member(state, b.policy, (tokens, full))
        if local:
            retry = over.tat + over.interval - over.burst * over.interval - now
        else:
            retry = over.empty_until - now
        stats = self.stats.limited
        key = (limits.route, over.policy)
        stats[key] = stats.get(key, 0) + 1
        raise RateLimitedError(
            max(1, math.ceil(retry - 1e-9)),
            [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())],
        )

    # ------------------------------------------------------------------------ Redis
    def _start_refill(self, b: Bucket) -> None:
        task = asyncio.get_running_loop().create_task(self._refilled(b))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refilled(self, b: Bucket) -> bool:
        """Until this bucket's refill (the one in flight, or a new one) has answered; False
        when Redis did not."""
        pending = b.refill
        if pending is not None:
            b.waiting += 1
            try:
                return await asyncio.shield(pending)
            finally:
                b.waiting -= 1
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        b.refill = done
        ok = False
        try:
            ok = await self._lease(b, max(b.lease_size, b.waiting + 1))
        finally:
            b.refill = None
            done.set_result(ok)
        return ok

    async def _lease(self, b: Bucket, want: int) -> bool:
        """Take `want` tokens from the shared bucket (give `-want` back); False when Redis did
        not answer."""
        redis = self.redis
        if redis is None:
            return False
        interval_us = max(1, round(b.interval * 1_000_000))
        if not b.redis_key:
            b.redis_key = _redis_key(redis, b.policy, b.key)
        args = (interval_us, b.burst, want)
        try:
            granted, ahead_us = await redis.run(lambda r: _call_script(r, b.redis_key, args))
        except RedisUnavailableError:
            return False
        now = _monotonic()
        self._local_logged = False
        b.shared_tat = now + ahead_us / 1_000_000
        if want > 0:
            b.lease += granted
            if granted < want:
                wait = ahead_us / 1_000_000 - (b.burst - 1) * b.interval
                b.empty_until = now + max(wait, 0.001)
        return True

    async def _sweep(self) -> None:
        """Give idle keys' unspent tokens back to Redis; forget idle buckets that are full again
        (with Redis up, any idle one: Redis keeps its state); past MAX_BUCKETS, the least
        recently used."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = _monotonic()
            redis = self.redis
            shared = redis is not None and not redis.is_down
            forget: list[str] = []
            for key, b in self.buckets.items():
                idle = now - b.used_at
                if idle < LEASE_IDLE or b.refill is not None or b.waiting:
                    continue
                if b.lease > 0:
                    self._give_back(b)
                elif b.tat <= now and (shared or b.shared_tat <= now):
                    forget.append(key)
            for key in forget:
                del self.buckets[key]
            over = len(self.buckets) - MAX_BUCKETS
            if over > 0:
                oldest = sorted(self.buckets.values(), key=_used_at)[:over]
                for b in oldest:
                    if b.refill is None and not b.waiting:
                        if b.lease > 0:
                            self._give_back(b)
                        del self.buckets[b.key]

    def _give_back(self, b: Bucket) -> None:
        n, b.lease = b.lease, 0
        task = asyncio.get_running_loop().create_task(self._lease(b, -n))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _call_script(r: Any, key: str, args: tuple[int, int, int]) -> tuple[int, int]:
    """EVALSHA, loading the script when Redis does not know it (a restarted Redis); `r` is a
    redis.asyncio client (a cluster client has the same calls)."""
    try:
        res = await r.evalsha(_SCRIPT_SHA, 1, key, *args)
    except NoScriptError:
        res = await r.eval(LEASE_SCRIPT, 1, key, *args)
    return int(res[0]), int(res[1])


def _used_at(b: Bucket) -> float:
    return b.used_at


def _redis_key(redis: RedisConnection, policy: str, key: str) -> str:
    return redis.key("rl:" + policy + ":" + hashlib.sha256(key.encode()).hexdigest()[:32])


def _key(p: LimitPolicy, route: str, info: TokenInfo | None, ip: str) -> str:
    """The bucket's key: the policy's name and each key part's value (NUL-separated)."""
    out = p.name
    for k in p.keys:
        if k == "client_id":
            value = (info.client_id if info is not None else None) or ""
        elif k == "sub":
            value = (info.subject if info is not None else None) or ""
        elif k == "grant":
            value = info.grant if info is not None else ""
        elif k == "route":
            value = route
        else:
            value = ip
        out += "\x00" + value
    return out


def _member(header: str, policy: str, state: tuple[float, float]) -> str:
    """Add `"policy";r=<tokens now>;t=<seconds until full>` to a `RateLimit` list."""
    r = str(max(0, math.floor(state[0] + 1e-9)))
    t = str(max(0, math.ceil(state[1] - 1e-9)))
    member = f'"{policy}";r={r};t={t}'
    return header + ", " + member if header else member
