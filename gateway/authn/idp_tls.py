"""TLS towards an identity provider (introspection, revocation, JWKS), for aiohttp.

aiohttp takes the client context per request (`ssl=`), so each call uses the source's current
context: a rotated CA or client certificate (re-read by `ReloadingTls.refresh()`) serves new
connections while pooled ones keep theirs. Without a `tls` block, aiohttp's default context
(the system trust store, the name verified) is used.

A certificate that does not verify, or a handshake that fails, is an outage of the source
(`ValidatorUnavailableError("idp_tls")`, 503), never an answer about the token; it is logged
once per episode with its detail (`idp_tls_failed`).
"""

from __future__ import annotations

import ssl

import aiohttp
import structlog

from gateway.config.models import ClientTlsConfig
from gateway.errors import ValidatorUnavailableError
from gateway.tls import ReloadingTls, client_tls

log = structlog.get_logger()


class IdpTls:
    """The client context of one source's HTTPS calls, and its TLS failures."""

    def __init__(self, name: str, cfg: ClientTlsConfig | None) -> None:
        self.name = name
        self.cfg = cfg
        #: built from `cfg` (raises ConfigError when its files do not load); None: aiohttp's
        #: default context
        self.holder: ReloadingTls | None = client_tls(name, cfg) if cfg is not None else None
        self._failing = False

    @property
    def ssl(self) -> ssl.SSLContext | bool:
        """aiohttp's `ssl=` for the next call."""
        return self.holder.context if self.holder is not None else True

    def refresh(self, warn: bool = False) -> None:
        """Re-read changed certificate files; `warn`: say again that verification is off."""
        if self.holder is None:
            return
        if warn and self.cfg is not None and self.cfg.insecure_skip_verify:
            log.warning("tls_verification_disabled", tls=self.name)
        self.holder.refresh()

    def failure(self, exc: BaseException, url: str) -> ValidatorUnavailableError | None:
        """The outage to raise when `exc` is a TLS failure at `url`; None otherwise."""
        detail = _detail(exc, url)
        if detail is None:
            return None
        if not self._failing:  # one line per episode, not one per lookup
            self._failing = True
            log.error("idp_tls_failed", tls=self.name, url=url, detail=detail)
        return ValidatorUnavailableError("idp_tls")

    def succeeded(self) -> None:
        """A call went through: the next TLS failure is logged again."""
        self._failing = False


def _detail(exc: BaseException, url: str) -> str | None:
    """Why a call failed in TLS: a certificate that does not verify (unknown CA, wrong name,
    expired), a protocol error (a plain-HTTP server), or the peer closing the handshake."""
    if isinstance(exc, aiohttp.ClientSSLError):
        cause = exc.os_error
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause)
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or cause)
        return str(cause)
    if (
        isinstance(exc, aiohttp.ClientConnectorError)
        and url.startswith("https://")
        and isinstance(exc.os_error, ConnectionResetError | BrokenPipeError)
    ):
        return "connection closed during the TLS handshake"
    return None
