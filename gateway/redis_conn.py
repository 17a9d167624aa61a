"""The Redis connection built from `redis:` (SPEC section 2), and how an outage is handled.

A connection error marks Redis down: it is logged once (`redis_unavailable`), then Redis is
skipped for an exponential backoff (capped at ~5 s) instead of being tried on every request;
one probe per backoff period finds out when it is back (`redis_recovered`). redis-py's own
exceptions never leave this module: callers see `RedisUnavailableError`.

`rediss://` (TLS): a single server's connections use the gateway's client context built from
`redis.tls` (re-read when its files change, like an upstream's, and the name verified is
`server_name` or the URL's host); in cluster mode redis-py's own `ssl_*` parameters carry the
same settings and redis-py reads the files when it opens connections. A certificate that does
not verify is a connection error like any other: Redis is unavailable, never a token invalid.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import structlog
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.config.models import ClientTlsConfig, RedisConfig
from gateway.tls import ReloadingTls, client_context, client_files
from gateway.tracecontext import ClientSpan

T = TypeVar("T")
log = structlog.get_logger()

#: socket connect and read timeout: a slow Redis must not hold requests for long
DEFAULT_TIMEOUT = 0.5
BACKOFF_INITIAL = 0.25
BACKOFF_MAX = 5.0
#: connections per process, and how long a command may wait for one when all are busy
POOL_SIZE = 64
POOL_WAIT = 2.0

# Errors meaning "Redis is not reachable right now"; other RedisErrors are failures of one command.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)


#: what a span of a Redis call says (never a key or a value)
_SPAN_ATTRIBUTES: dict[str, str | int] = {"db.system.name": "redis"}


class RedisUnavailableError(Exception):
    """Redis could not answer (down, timing out, or skipped during a backoff period)."""


class RedisConnection:
    """A Redis client with a key prefix and outage bookkeeping; one per process."""

    def __init__(
        self,
        client: Redis,
        key_prefix: str,
        *,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        closers: tuple[Callable[[], Awaitable[Any]], ...] = (),
        tls: ReloadingTls | None = None,
        tls_cfg: ClientTlsConfig | None = None,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.tls = tls
        self.tls_cfg = tls_cfg
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._closers = closers
        self._failures = 0
        self._delay = 0.0
        self._retry_at = 0.0
        self._down_since = 0.0
        self._closed = False

    def key(self, suffix: str) -> str:
        """`{key_prefix}{suffix}`."""
        return self.prefix + suffix

    @property
    def is_down(self) -> bool:
        """Whether the last attempt failed (Redis is being skipped or probed)."""
        return self._failures > 0

    @property
    def retry_delay(self) -> float:
        """Seconds until the next probe is due (0 when Redis is up)."""
        return max(0.0, self._retry_at - time.monotonic()) if self._failures else 0.0

    async def run(self, op: Callable[[Redis], Awaitable[T]], *, force: bool = False) -> T:
        """Run `op(client)`; raise RedisUnavailableError on failure or during a backoff.

        `force` tries even during a backoff period (for rare writes that must not be skipped).
        Made for a sampled request's token lookup, the call is a span of its trace.
        """
        with ClientSpan("redis", _SPAN_ATTRIBUTES):
            return await self._run(op, force)

    async def _run(self, op: Callable[[Redis], Awaitable[T]], force: bool) -> T:
        if self._failures and not force:
            now = time.monotonic()
            if now < self._retry_at:
                raise RedisUnavailableError("redis skipped during backoff")
            self._retry_at = now + self._delay  # this call is the probe; others keep skipping
        try:
            result = await op(self.client)
        except _OUTAGE_ERRORS as exc:
            self.record_failure(exc)
            raise RedisUnavailableError(type(exc).__name__) from exc
        except redis_errors.RedisError as exc:
            raise RedisUnavailableError(type(exc).__name__) from exc
        self.record_success()
        return result

    def record_failure(self, exc: BaseException) -> None:
        """Note a connection failure: the first one of an outage is logged."""
        now = time.monotonic()
        if not self._failures:
            self._down_since = now
            self._delay = self.backoff_initial
            log.error("redis_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
        else:
            self._delay = min(self._delay * 2, self.backoff_max)
        self._failures += 1
        self._retry_at = now + self._delay

    def record_success(self) -> None:
        """Note a successful command: ends an outage (logged once)."""
        if self._failures:
            down_for = round(time.monotonic() - self._down_since, 3)
            self._failures = 0
            self._delay = 0.0
            log.info("redis_recovered", down_seconds=down_for)

    async def ping(self) -> bool:
        """True when Redis answers PING (for readiness checks)."""
        try:
            await self.run(lambda r: r.ping(), force=True)
        except RedisUnavailableError:
            return False
        return True

    def refresh_tls(self, warn: bool = False) -> None:
        """Re-read the `redis.tls` files when they changed (new connections use them); `warn`:
        say again that verification is off, when it is."""
        cfg = self.tls_cfg
        if warn and cfg is not None and cfg.insecure_skip_verify:
            log.warning("tls_verification_disabled", tls="redis.tls")
        if self.tls is not None:
            self.tls.refresh()

    async def close(self) -> None:
        """Close every connection of the client (and of the sentinels); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()
        for closer in self._closers:
            await closer()


def _client_kwargs(timeout: float) -> dict[str, Any]:
    # redis-py retries ten times by default; the backoff above replaces that.
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "encoding_errors": "replace",  # bytes written by others must not break a read
    }


class TlsConnection(SSLConnection):
    """A `rediss://` connection made with the gateway's client context (`redis.tls`): the
    context current when the connection opens, and the name to verify."""

    def __init__(self, *, gateway_tls: ReloadingTls, server_name: str | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.gateway_tls = gateway_tls
        self.server_name = server_name

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "ssl": self.gateway_tls.context,
            "server_hostname": self.server_name or self.host,
        }


def _redis_tls(cfg: ClientTlsConfig | None) -> ReloadingTls:
    """The reloading client context of `redis.tls` (ConfigError when its files do not load);
    warns when verification is off. No ALPN: Redis speaks RESP, not HTTP/1.1."""
    if cfg is not None and cfg.insecure_skip_verify:
        log.warning("tls_verification_disabled", tls="redis.tls")

    def build() -> ssl.SSLContext:
        ctx = client_context(cfg)
        ctx.set_alpn_protocols([])
        return ctx

    return ReloadingTls("redis.tls", client_files(cfg), build)


def _cluster_tls_kwargs(cfg: ClientTlsConfig | None) -> dict[str, Any]:
    """redis-py's own TLS parameters (cluster mode builds its connections itself)."""
    if cfg is None:
        return {"ssl_min_version": ssl.TLSVersion.TLSv1_2}
    kwargs: dict[str, Any] = {
        "ssl_ca_certs": cfg.ca_file,
        "ssl_certfile": cfg.cert_file,
        "ssl_keyfile": cfg.key_file,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if cfg.insecure_skip_verify:
        kwargs.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    return kwargs


def _sentinel_client(url: str, kwargs: dict[str, Any]) -> tuple[Redis, Sentinel]:
    """`redis+sentinel://[user:pass@]host:port,host:port/service_name[/db]`."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "26379"
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs a service name: .../service_name[/db]")
    sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel_cls: Any = Sentinel  # untyped in redis-py
    sentinel: Sentinel = sentinel_cls(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)
    client = sentinel.master_for(
        path[0],
        db=int(path[1]) if len(path) > 1 else 0,
        username=unquote(user) or None,
        password=unquote(password) or None,
        **kwargs,
    )
    return cast(Redis, client), sentinel


def connect_redis(
    cfg: RedisConfig,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    backoff_initial: float = BACKOFF_INITIAL,
    backoff_max: float = BACKOFF_MAX,
) -> RedisConnection:
    """Build the client for `cfg.url` (no I/O: connections are opened on first use; the
    `redis.tls` files are read now, ConfigError when they do not load)."""
    kwargs = _client_kwargs(timeout)
    closers: tuple[Callable[[], Awaitable[Any]], ...] = ()
    tls: ReloadingTls | None = None
    rediss = cfg.url.startswith("rediss://")
    if cfg.url.startswith("redis+sentinel://"):
        client, sentinel = _sentinel_client(cfg.url, kwargs)
        closers = tuple(s.aclose for s in sentinel.sentinels)
    elif cfg.cluster:
        if rediss:
            kwargs.update(_cluster_tls_kwargs(cfg.tls))
            if cfg.tls is not None and cfg.tls.insecure_skip_verify:
                log.warning("tls_verification_disabled", tls="redis.tls")
        # A cluster client has the same command methods; typed as Redis for one code path.
        client = cast(Redis, RedisCluster.from_url(cfg.url, **kwargs))
    else:
        if rediss:
            tls = _redis_tls(cfg.tls)
            server_name = cfg.tls.server_name if cfg.tls is not None else None
            kwargs.update(connection_class=TlsConnection, gateway_tls=tls, server_name=server_name)
        # A blocking pool: past POOL_SIZE concurrent commands, callers wait for a connection
        # instead of failing with MaxConnectionsError (which would look like an outage).
        pool = BlockingConnectionPool.from_url(
            cfg.url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **kwargs
        )
        client = Redis.from_pool(pool)
    return RedisConnection(
        client,
        cfg.key_prefix,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        closers=closers,
        tls=tls,
        tls_cfg=cfg.tls if rediss else None,
    )
