"""Per-upstream pools of keep-alive connections: round-robin over targets, failover on
refused connections, a per-target connection limit, idle expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from gateway.config.models import UpstreamConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.http.upstream import UpstreamConnection

_IDLE_SWEEP: Final = 1.0
_DEADLINE_SWEEP: Final = (
    0.05  # resolution of upstream timeouts; one timer per pool, not per request
)


@dataclass
class Target:
    host: str
    port: int
    base_path: str
    idle: deque[UpstreamConnection] = field(default_factory=deque)
    count: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/"))


class UpstreamPool:
    """Round-robin over targets with failover on refused connections; keep-alive reuse."""

    def __init__(self, name: str, cfg: UpstreamConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.targets = [Target.parse(u) for u in cfg.all_targets]
        self._next = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._busy: set[UpstreamConnection] = set()
        self._deadlines: asyncio.TimerHandle | None = None

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection to the round-robin's next target, without waiting; None when
        that target has none idle (then acquire() connects, keeping the rotation fair)."""
        conn = self._idle(self.targets[self._next])
        if conn is not None:
            self._next = (self._next + 1) % len(self.targets)
        return conn

    def busy(self, conn: UpstreamConnection) -> None:
        """A connection now waits for an answer: its deadline is watched."""
        self._busy.add(conn)
        if self._deadlines is None:
            self._deadlines = self.loop.call_later(_DEADLINE_SWEEP, self._check_deadlines)

    def idle_again(self, conn: UpstreamConnection) -> None:
        self._busy.discard(conn)

    def _check_deadlines(self) -> None:
        self._deadlines = None
        now = time.monotonic()
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn.check_deadline(now)
        if self._busy:
            self._deadlines = self.loop.call_later(_DEADLINE_SWEEP, self._check_deadlines)

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """A connection to the next healthy target; UpstreamError if none can be reached."""
        n = len(self.targets)
        start = self._next
        self._next = (start + 1) % n
        last: GatewayError = UpstreamError("upstream_unreachable")
        for i in range(n):
            target = self.targets[(start + i) % n]
            if not fresh:
                conn = self._idle(target)
                if conn is not None:
                    return conn
            try:
                return await self._connect(target)
            except GatewayError as exc:
                last = exc
        raise last

    def _idle(self, target: Target) -> UpstreamConnection | None:
        while target.idle:
            conn = target.idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def _connect(self, target: Target) -> UpstreamConnection:
        while target.count >= self.cfg.max_connections:
            waiter = self.loop.create_future()
            target.waiters.append(waiter)
            await waiter
            conn = self._idle(target)
            if conn is not None:
                return conn
        target.count += 1
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(self, target), target.host, target.port
                ),
                self.cfg.connect_timeout,
            )
        except TimeoutError:
            target.count -= 1
            raise UpstreamTimeoutError("upstream_connect_timeout") from None
        except OSError:
            target.count -= 1
            self._wake(target)
            raise UpstreamError("upstream_refused") from None
        return proto

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        target = conn.target
        if not reusable or conn.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        target.idle.append(conn)
        self._wake(target)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_IDLE_SWEEP, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        """Called when a connection closes."""
        self._busy.discard(conn)
        target = conn.target
        with contextlib.suppress(ValueError):
            target.idle.remove(conn)
        target.count -= 1
        self._wake(target)

    def _wake(self, target: Target) -> None:
        while target.waiters:
            waiter = target.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        limit = time.monotonic() - self.cfg.idle_timeout
        pending = False
        for target in self.targets:
            for conn in list(target.idle):
                if conn.idle_since < limit:
                    conn.close()
                else:
                    pending = True
        if pending:
            self._sweeper = self.loop.call_later(_IDLE_SWEEP, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._deadlines is not None:
            self._deadlines.cancel()
        for target in self.targets:
            for conn in list(target.idle):
                conn.close()
