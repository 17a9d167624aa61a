"""TLS contexts from the config, for listeners (server side) and for upstreams and identity
providers (client side), rebuilt when their certificate files change.

Listeners: TLS 1.2 and 1.3 only, forward-secret AEAD suites only (every TLS 1.3 suite is), ALPN
`http/1.1`, no compression, no renegotiation. A listener is created once with one context; its
SNI callback, which OpenSSL runs for every ClientHello (with or without a server name), hands
each new handshake the current context, so a reloaded certificate serves new connections while
open ones keep theirs. Clients: the system trust store or `ca_file`, the name verified, an
optional client certificate.

A `ReloadingTls` re-reads its files when their content changes (`refresh()`, called by the
config watcher and on SIGHUP; Kubernetes swaps Secret files through a symlink, so the content is
compared, not the inode). A pair that does not load is refused with one logged error and the
last good context keeps serving.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.config.models import ClientTlsConfig, ListenerTlsConfig
from gateway.errors import ConfigError

log = structlog.get_logger("gateway")

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher; nothing else
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_ALPN = ["http/1.1"]


class DirectSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` whose `read`, `write` and `pending` are the C object's own methods.

    The event loop's SSL protocol (uvloop's, asyncio's) calls these for every TLS record, and
    SSLObject's are Python methods that only forward to the C object (`self._sslobj.read(...)`,
    same arguments, same results): a Python frame per call, about 1.5k instructions per
    keep-alive request over TLS (callgrind, bench/tls_instructions.py). Bound here once per
    connection, before the protocol looks them up (uvloop keeps the bound methods it finds).
    Every other method is SSLObject's."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        self: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        raw = self._sslobj  # type: ignore[attr-defined]
        self.read = raw.read  # type: ignore[method-assign]
        self.write = raw.write  # type: ignore[method-assign]
        self.pending = raw.pending  # type: ignore[method-assign]
        return self


def _direct(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.sslobject_class = DirectSSLObject
    return ctx


def server_context(cfg: ListenerTlsConfig) -> ssl.SSLContext:
    """A listener's context; raises OSError or ssl.SSLError when its files do not load."""
    ctx = _direct(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.minimum_version = _VERSIONS[cfg.min_version]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(_ALPN)
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    mode = cfg.verify_clients
    if mode is not None:
        assert cfg.client_ca_file is not None
        ctx.load_verify_locations(cafile=cfg.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if mode == "required" else ssl.CERT_OPTIONAL
    return ctx


def client_context(cfg: ClientTlsConfig | None) -> ssl.SSLContext:
    """A context for connections to an upstream or an IdP; raises OSError or ssl.SSLError
    when its files do not load."""
    ca_file = cfg.ca_file if cfg is not None else None
    # the system trust store without ca_file
    ctx = _direct(ssl.create_default_context(cafile=ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(_ALPN)
    if cfg is not None:
        if cfg.cert_file is not None and cfg.key_file is not None:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    return ctx


def listener_files(cfg: ListenerTlsConfig) -> tuple[str, ...]:
    """The files a listener's context is built from."""
    return (cfg.cert_file, cfg.key_file) + ((cfg.client_ca_file,) if cfg.client_ca_file else ())


def client_files(cfg: ClientTlsConfig | None) -> tuple[str, ...]:
    """The files a client context is built from (none: the system trust store only)."""
    if cfg is None:
        return ()
    return tuple(f for f in (cfg.ca_file, cfg.cert_file, cfg.key_file) if f is not None)


def _digest(files: tuple[str, ...]) -> bytes | None:
    """The files' content, hashed; None while one cannot be read (mid-swap, removed)."""
    h = hashlib.sha256()
    for name in files:
        try:
            h.update(Path(name).read_bytes())
        except OSError:
            return None
        h.update(b"\0")
    return h.digest()


class ReloadingTls:
    """A TLS context and the files it was built from; rebuilt when their content changes."""

    def __init__(
        self, name: str, files: tuple[str, ...], build: Callable[[], ssl.SSLContext]
    ) -> None:
        self.name = name
        self.files = files
        self._build = build
        self._digest = _digest(files)
        self._refused: bytes | None = None  # the content last refused (logged once)
        self.refusals = 0  # pairs refused so far (for the reload metric)
        try:
            self.context = build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"{name}: cannot load TLS files: {_reason(exc)}"]) from None

    def refresh(self) -> bool:
        """Rebuild when the files changed; True when a new context was taken."""
        digest = _digest(self.files)
        if digest is None or digest == self._digest or digest == self._refused:
            return False
        try:
            context = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._refused = digest
            self.refusals += 1
            log.error("tls_reload_refused", tls=self.name, reason=_reason(exc))
            return False
        self.context = context
        self._digest = digest
        self._refused = None
        log.info("tls_reloaded", tls=self.name)
        return True


def listener_tls(name: str, cfg: ListenerTlsConfig) -> tuple[ssl.SSLContext, ReloadingTls]:
    """The context to create a listener with, and the reloading holder behind it: every new
    handshake is switched to the holder's current context by the SNI callback."""
    holder = ReloadingTls(name, listener_files(cfg), lambda: server_context(cfg))
    outer = server_context(cfg)

    def use_current(
        conn: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        current = holder.context
        if conn.context is not current:
            conn.context = current
        return None

    outer.sni_callback = use_current  # OpenSSL calls it with the SSLObject (memory BIO)
    return outer, holder


def client_tls(name: str, cfg: ClientTlsConfig | None) -> ReloadingTls:
    """A reloading client context; warns at every build when verification is off."""
    if cfg is not None and cfg.insecure_skip_verify:
        log.warning("tls_verification_disabled", tls=name)
    return ReloadingTls(name, client_files(cfg), lambda: client_context(cfg))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
