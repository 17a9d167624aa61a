"""One gateway process: main listener, admin listener, reload on SIGHUP or config change, drain."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gateway import build_kind
from gateway.admin import build_admin_app
from gateway.authn.validator import TokenValidator
from gateway.config import load_config
from gateway.config.models import GatewayConfig, ListenerTlsConfig
from gateway.errors import ConfigError
from gateway.http import fastscan
from gateway.http.server import Handler, ServerContext, make_protocol_factory
from gateway.logs import setup_logging
from gateway.metrics import Metrics
from gateway.redis_conn import connect_redis
from gateway.runtime import Runtime
from gateway.tls import ReloadingTls, listener_tls
from gateway.tracecontext import Recorder

log = structlog.get_logger("gateway")
_WATCH_INTERVAL = 2.0
_RETIRE_GRACE = 60.0  # a replaced validator serves the lookups in flight this long, then closes
#: A TLS handshake not finished by then is cut (a connection that says nothing, or half a
#: ClientHello, must not hold a socket; the header timeout starts only once it is done)
HANDSHAKE_TIMEOUT = 10.0
#: A closing TLS connection waits this long for the client's close_notify, then is cut
TLS_SHUTDOWN_TIMEOUT = 5.0


class Gateway:
    """Owns the listeners and the current Runtime of one process."""

    def __init__(
        self, cfg: GatewayConfig, config_path: str | None = None, admin_socket: str | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.admin_socket = admin_socket  # a worker's admin listener (gateway/workers.py)
        self.metrics = Metrics()
        self.runtime: Runtime | None = None
        self.ctx: ServerContext | None = None
        self.fa_ctx: ServerContext | None = None
        self.servers: list[asyncio.Server] = []
        self.server: asyncio.Server | None = None
        self.admin: web.AppRunner | None = None
        self.admin_server: asyncio.AbstractServer | None = None  # open while draining (/readyz)
        self.ports: dict[str, int] = {}
        #: every TLS context whose files are re-read on SIGHUP and when they change
        self.tls: list[ReloadingTls] = []
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.draining = False
        self._config_digest = _digest(config_path)
        self._watch: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()  # SIGHUP and the file watcher may fire together
        self._retiring: dict[asyncio.Task[None], TokenValidator] = {}
        self._retiring_recorder: asyncio.Task[None] | None = None  # replaced by a reload
        self._stopped = asyncio.Event()

    async def _build_validator(self, cfg: GatewayConfig) -> TokenValidator:
        redis = connect_redis(cfg.redis) if cfg.redis is not None else None
        try:
            validator = TokenValidator.from_config(cfg, redis)
        except ConfigError:  # a source's TLS files do not load
            if redis is not None:
                await redis.close()
            raise
        await validator.start()
        return validator

    async def start(self, reuse_port: bool = False) -> None:
        cfg = self.cfg
        # TLS files first: a pair that does not load stops the start before anything is bound
        listen_tls = self._listener_tls("listen", cfg.listen.tls)
        fa = cfg.forward_auth
        fa_tls = self._listener_tls("forward_auth", fa.tls if fa is not None else None)
        admin_tls = self._listener_tls("admin", cfg.admin.tls if cfg.admin is not None else None)
        validator = await self._build_validator(cfg)
        try:
            self.runtime = rt = Runtime(cfg, validator, self.metrics, recorder=self._recorder(cfg))
        except ConfigError:  # an upstream's TLS files do not load
            await validator.close()
            raise
        self.ctx = ctx = _server_context(rt.pipeline.handle, cfg.listen.tls)
        self._apply_limits(cfg)
        self.metrics.track_in_flight(lambda: float(ctx.in_flight))
        loop = asyncio.get_running_loop()
        sock = _bind(cfg.listen.host, cfg.listen.port, reuse_port)
        self.server = await loop.create_server(
            make_protocol_factory(ctx), sock=sock, backlog=4096, **self._tls_args(listen_tls)
        )
        self.servers.append(self.server)
        self.ports["listen"] = sock.getsockname()[1]
        if cfg.forward_auth is not None:
            self.fa_ctx = _server_context(rt.decider.handle, cfg.forward_auth.tls)
            self._apply_limits(cfg)
            fa_sock = _bind(cfg.forward_auth.host, cfg.forward_auth.port, reuse_port)
            self.servers.append(
                await loop.create_server(
                    make_protocol_factory(self.fa_ctx), sock=fa_sock, **self._tls_args(fa_tls)
                )
            )
            self.ports["forward_auth"] = fa_sock.getsockname()[1]
        if cfg.admin is not None:
            app = build_admin_app(self.metrics, lambda: not self.draining)
            self.admin = web.AppRunner(app, access_log=None, handle_signals=False)
            await self.admin.setup()
            if self.admin_socket is not None:
                await web.UnixSite(self.admin, self.admin_socket).start()
            else:
                admin_sock = _bind(cfg.admin.host, cfg.admin.port, reuse_port)
                # aiohttp's SockSite cannot bound a TLS handshake: its server is created here
                assert self.admin.server is not None
                self.admin_server = await loop.create_server(
                    self.admin.server, sock=admin_sock, backlog=128, **self._tls_args(admin_tls)
                )
                self.ports["admin"] = admin_sock.getsockname()[1]
        if self.config_path or self.tls:
            self._watch = asyncio.create_task(self._watch_config())
        log.info(
            "gateway_started",
            ports=self.ports,
            routes=len(rt.routes.routes),
            build=build_kind(),
            head_scanner=fastscan.NAME,
        )

    def _listener_tls(self, name: str, cfg: ListenerTlsConfig | None) -> ssl.SSLContext | None:
        """The context a TLS listener is created with (None: plain HTTP); its reloading holder
        joins self.tls. Raises ConfigError when the files do not load."""
        if cfg is None:
            return None
        outer, holder = listener_tls(name, cfg)
        self.tls.append(holder)
        return outer

    def _tls_args(self, context: ssl.SSLContext | None) -> dict[str, Any]:
        if context is None:
            return {}
        return {
            "ssl": context,
            "ssl_handshake_timeout": self.handshake_timeout,
            "ssl_shutdown_timeout": TLS_SHUTDOWN_TIMEOUT,
        }

    def refresh_tls(self) -> None:
        """Re-read the certificate files that changed: new handshakes get the new pair, open
        connections keep theirs; a pair that does not load is refused (logged) and the old one
        keeps serving."""
        for holder in self.tls:
            refusals = holder.refusals
            if holder.refresh():
                self.metrics.tls_reloads.labels(holder.name, "applied").inc()
            elif holder.refusals != refusals:
                self.metrics.tls_reloads.labels(holder.name, "refused").inc()

    def _contexts(self) -> list[ServerContext]:
        return [c for c in (self.ctx, self.fa_ctx) if c is not None]

    def _apply_limits(self, cfg: GatewayConfig) -> None:
        for ctx in self._contexts():
            ctx.realm = cfg.realm
            ctx.max_header_bytes = cfg.limits.max_header_bytes
            ctx.max_header_count = cfg.limits.max_header_count
            ctx.max_url_bytes = cfg.limits.max_url_bytes
            ctx.max_in_flight = cfg.limits.max_in_flight

    async def reload(self) -> bool:
        """Swap in a new config (an invalid one is refused and the old one keeps serving), and
        re-read the TLS files that changed."""
        async with self._reload_lock:
            self.refresh_tls()
            return await self._reload()

    async def _reload(self) -> bool:
        if not self.config_path or self.runtime is None or self.ctx is None:
            return False
        self._config_digest = _digest(self.config_path)  # the watcher must not apply it twice
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            return self._refuse(exc)
        old = self.runtime
        for key in ("listen", "admin", "workers", "forward_auth"):
            if getattr(cfg, key) != getattr(old.cfg, key):
                log.warning("config_key_needs_restart", key=key)
        same_tokens = cfg.tokens == old.cfg.tokens and cfg.redis == old.cfg.redis
        recorder = old.recorder if cfg.tracing == old.cfg.tracing else self._recorder(cfg)
        try:  # the TLS files a new config names are read here: they may not load
            validator = old.validator if same_tokens else await self._build_validator(cfg)
        except ConfigError as exc:
            return self._refuse(exc)
        try:
            rt = Runtime(
                cfg,
                validator,
                self.metrics,
                pools=old.pools,
                limiter=old.limiter,
                recorder=recorder,
            )
        except ConfigError as exc:
            if validator is not old.validator:
                await validator.close()
            return self._refuse(exc)
        if not same_tokens:
            validator.adopt_cache(old.validator)
        self.runtime = rt
        self.ctx.handler = rt.pipeline.handle
        if self.fa_ctx is not None:
            self.fa_ctx.handler = rt.decider.handle
        self._apply_limits(cfg)
        setup_logging(cfg.log)
        old.close_pools(keep=rt.pools)
        if validator is not old.validator:
            self._retire(old.validator)
        if old.recorder is not None and old.recorder is not recorder:
            self._retiring_recorder = asyncio.create_task(old.recorder.close())
        self.cfg = cfg
        self.metrics.reloads.labels("applied").inc()
        log.info("config_reloaded", routes=len(rt.routes.routes))
        self._refresh_client_tls(before=old)
        return True

    def _refuse(self, exc: ConfigError) -> bool:
        log.error("config_reload_refused", problems=exc.problems)
        self.metrics.reloads.labels("refused").inc()
        return False

    def _refresh_client_tls(self, before: Runtime | None = None) -> None:
        """Re-read the certificate files of upstreams, token sources and Redis that changed
        (new connections use them). After a reload (`before`: the runtime replaced), what it
        handed over says again that it skips verification; what is new said so when built."""
        rt = self.runtime
        if rt is None:
            return
        for name, pool in rt.pools.items():
            pool.refresh_tls(warn=before is not None and before.pools.get(name) is pool)
        rt.validator.refresh_tls(warn=before is not None and before.validator is rt.validator)

    def _recorder(self, cfg: GatewayConfig) -> Recorder | None:
        """The span recorder of `tracing:` when it names a collector (the SDK is loaded then)."""
        if cfg.tracing is None or cfg.tracing.otlp_endpoint is None:
            return None
        from gateway.tracing import SpanRecorder

        return SpanRecorder(cfg.tracing, self.metrics.count_dropped_spans)

    def _retire(self, validator: TokenValidator) -> None:
        """Close a replaced validator once the lookups that requests await on it are done."""

        async def later() -> None:
            await asyncio.sleep(_RETIRE_GRACE)
            await validator.close()

        task = asyncio.create_task(later())
        task.add_done_callback(lambda t: self._retiring.pop(t, None))
        self._retiring[task] = validator

    async def _watch_config(self) -> None:
        """Kubernetes swaps ConfigMap and Secret files through a symlink: watch the content of
        the config file and of the TLS files, not the inode."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            self.refresh_tls()
            self._refresh_client_tls()
            digest = _digest(self.config_path)
            if digest is not None and digest != self._config_digest:
                self._config_digest = digest
                await self.reload()

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish up to shutdown_timeout, close."""
        if self.draining:
            return
        self.draining = True
        contexts = self._contexts()
        for server in self.servers:
            server.close()
        for ctx in contexts:
            ctx.draining = True
            for conn in list(ctx.connections):
                if not conn.queue and conn.transport is not None:
                    conn.transport.close()  # idle keep-alive connections go now
        busy = []
        for ctx in contexts:
            if ctx.in_flight:
                ctx.idle.clear()
                busy.append(ctx.idle.wait())
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*busy), self.cfg.shutdown_timeout)
        for ctx in contexts:
            for conn in list(ctx.connections):
                conn.abort()
        await self.close()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for server in self.servers:
            server.close()
        if self.admin_server is not None:
            self.admin_server.close()
        if self.admin is not None:
            await self.admin.cleanup()
        if self.runtime is not None:
            self.runtime.access.flush()
            self.runtime.close_pools()
            await self.runtime.validator.close()
            if self.runtime.recorder is not None:
                await self.runtime.recorder.close()
        if self._retiring_recorder is not None:
            await self._retiring_recorder
        for task, validator in list(self._retiring.items()):
            task.cancel()
            await validator.close()
        self._stopped.set()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.drain()))
        await self._stopped.wait()
        log.info("gateway_stopped")


def _server_context(handler: Handler, tls: ListenerTlsConfig | None) -> ServerContext:
    """A listener's shared state; on TLS its connections say `https` (X-Forwarded-Proto) and,
    when clients are asked for certificates, carry the verified one."""
    if tls is None:
        return ServerContext(handler=handler)
    return ServerContext(
        handler=handler, scheme="https", client_certs=tls.verify_clients is not None
    )


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _digest(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return None


def install_uvloop() -> None:
    """uvloop when available: the data path is built for it."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    cfg: GatewayConfig,
    config_path: str | None,
    reuse_port: bool = False,
    admin_socket: str | None = None,
) -> None:
    gw = Gateway(cfg, config_path, admin_socket)
    await gw.start(reuse_port=reuse_port)
    await gw.run_until_signalled()
