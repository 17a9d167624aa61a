"""Per-upstream pools of keep-alive connections: round-robin over targets, failover on
refused connections, a per-target connection limit, idle expiry.

An `https://` upstream's connections are TLS ones, pooled and reused like plain ones: the
handshake happens once per connection, with the pool's current client context (re-read from
its files by `refresh_tls()`, so new connections use a rotated CA or client certificate while
open ones keep theirs). A handshake that fails, or a certificate that does not verify, is
`upstream_tls`: the next target may be tried, plain HTTP never is. Plain pools do no TLS work
at all; the per-request path is the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import structlog

from gateway.config.models import UpstreamConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.http.upstream import UpstreamConnection
from gateway.tls import ReloadingTls, client_tls

log = structlog.get_logger("gateway")
#: a TLS connection attempt that reached the target and failed its handshake: a certificate
#: that does not verify, a protocol error (a plain-HTTP server answering), or the peer closing
#: during the handshake (a refused connection is ConnectionRefusedError, not one of these)
_TLS_FAILURES = (ssl.SSLError, ConnectionResetError, BrokenPipeError)

_IDLE_SWEEP: Final = 1.0
_DEADLINE_SWEEP: Final = (
    0.05  # resolution of upstream timeouts; one timer per pool, not per request
)


@dataclass
class Target:
    host: str
    port: int
    base_path: str
    #: the name sent as SNI and verified in the certificate; None: plain HTTP
    server_name: str | None = None
    #: `host[:port]` as the URL writes it: the Host of a request whose client sent none
    authority: str = ""
    idle: deque[UpstreamConnection] = field(default_factory=deque)
    count: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    @classmethod
    def parse(cls, url: str, server_name: str | None = None) -> Target:
        """A target from its URL; an `https://` one verifies `server_name`, by default its
        host (an IP address is then matched against the certificate's IP addresses)."""
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        authority = parts.netloc.rpartition("@")[2] or host
        path = parts.path.rstrip("/")
        if parts.scheme == "https":
            return cls(host, parts.port or 443, path, server_name or host, authority)
        return cls(host, parts.port or 80, path, None, authority)


class UpstreamPool:
    """Round-robin over targets with failover on refused connections; keep-alive reuse."""

    def __init__(self, name: str, cfg: UpstreamConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        tls_cfg = cfg.tls
        server_name = tls_cfg.server_name if tls_cfg is not None else None
        self.targets = [Target.parse(u, server_name) for u in cfg.all_targets]
        #: the client context of an https upstream (raises ConfigError when its files do not
        #: load); None for plain HTTP
        self.tls: ReloadingTls | None = (
            client_tls(f"upstreams.{name}.tls", tls_cfg) if cfg.https else None
        )
        self._tls_failing = False
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
        tls = self.tls
        try:
            if tls is None:
                connecting = self.loop.create_connection(
                    lambda: UpstreamConnection(self, target), target.host, target.port
                )
            else:
                connecting = self.loop.create_connection(
                    lambda: UpstreamConnection(self, target),
                    target.host,
                    target.port,
                    ssl=tls.context,
                    server_hostname=target.server_name,
                )
            _, proto = await asyncio.wait_for(connecting, self.cfg.connect_timeout)
        except TimeoutError:
            target.count -= 1
            raise UpstreamTimeoutError("upstream_connect_timeout") from None
        except OSError as exc:
            target.count -= 1
            self._wake(target)
            if tls is not None and isinstance(exc, _TLS_FAILURES):
                if not self._tls_failing:  # one line per episode, not one per request
                    self._tls_failing = True
                    log.error(
                        "upstream_tls_failed",
                        upstream=self.name,
                        target=f"{target.host}:{target.port}",
                        detail=_tls_detail(exc),
                    )
                raise UpstreamError("upstream_tls") from None
            raise UpstreamError("upstream_refused") from None
        self._tls_failing = False
        return proto

    def refresh_tls(self, warn: bool = False) -> None:
        """Re-read the client certificate files when they changed (new connections use them);
        `warn`: say again that verification is off, when it is (a reload keeps this pool)."""
        tls = self.tls
        if tls is None:
            return
        tls_cfg = self.cfg.tls
        if warn and tls_cfg is not None and tls_cfg.insecure_skip_verify:
            log.warning("tls_verification_disabled", tls=tls.name)
        tls.refresh()

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


def _tls_detail(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc)
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return "connection closed during the TLS handshake"
