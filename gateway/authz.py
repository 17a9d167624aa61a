"""Authorization of an authenticated request, no I/O: appsecret_proof, then grants, then scopes.

The proof comes first so that a token thief without the app secret learns nothing about scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final, Literal

from gateway.authn.info import TokenInfo
from gateway.config.models import GatewayConfig
from gateway.errors import (
    InsufficientGrantError,
    InsufficientScopeError,
    InvalidProofError,
    InvalidRequestError,
)
from gateway.extract import Credentials, ExtractPolicy
from gateway.http.wire import Challenge
from gateway.proof import proof_message

ProofMode = Literal["required", "optional", "off"]

SENDER_OFF: Final = 0
SENDER_DPOP: Final = 1
SENDER_MTLS: Final = 2
SENDER_ANY: Final = 3
SENDER_CONSTRAINTS: Final = {
    "off": SENDER_OFF,
    "dpop": SENDER_DPOP,
    "mtls": SENDER_MTLS,
    "any": SENDER_ANY,
}

_TIME: Final = re.compile(r"-?[0-9]{1,12}")
_HEX: Final = frozenset("0123456789abcdef")


@dataclass(slots=True, frozen=True)
class AuthPolicy:
    """What a route asks of a token, built once with the route: where the token may come from,
    and the checks of authorize(). The session endpoint has one too (no grants or scopes)."""

    extract: ExtractPolicy
    grants: frozenset[str] | None  # None: any grant
    scopes: tuple[str, ...]  # as configured (the challenge's `scope=`)
    required_scopes: frozenset[str]
    appsecret_proof: ProofMode
    preflight_pass: bool  # a CORS preflight goes through without a token
    strip_form_token: bool  # a form-body token is removed before forwarding (not forward_token)
    #: the route's resource: the token's audience must name it (None: any audience)
    resource: str | None = None
    sender: int = SENDER_OFF  # sender_constraint: SENDER_OFF | _DPOP | _MTLS | _ANY
    #: resource or sender constraint set: the bound-token step runs for every token
    bound: bool = False
    #: the route's WWW-Authenticate shape; None: RFC 6750's plain Bearer challenge
    challenge: Challenge | None = None
    #: the same for a request that used the DPoP scheme
    dpop_challenge: Challenge | None = None


@dataclass(slots=True, frozen=True)
class App:
    """An app's keyed HMACs (one per secret, copied per request) and its proof_max_age."""

    client_id: str
    keyed: tuple[hmac.HMAC, ...]
    proof_max_age: float

    def matches(self, message: bytes, proof: bytes) -> bool:
        """Constant-time check of `proof` against every secret, without stopping at a match."""
        ok = False
        for base in self.keyed:
            mac = base.copy()
            mac.update(message)
            ok |= hmac.compare_digest(mac.hexdigest().encode("ascii"), proof)
        return ok


class AppRegistry:
    """The apps of the config, keyed by client_id."""

    __slots__ = ("_apps",)

    def __init__(self, apps: dict[str, App]) -> None:
        self._apps = apps

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> AppRegistry:
        """Key one HMAC per secret once, at load time."""
        apps = {
            a.client_id: App(
                client_id=a.client_id,
                keyed=tuple(
                    hmac.new(s.get_secret_value().encode("utf-8"), digestmod=hashlib.sha256)
                    for s in a.secrets
                ),
                proof_max_age=a.proof_max_age,
            )
            for a in cfg.apps
        }
        return cls(apps)

    def get(self, client_id: str | None) -> App | None:
        """The app of a token's client_id, or None."""
        return self._apps.get(client_id) if client_id else None


def authorize(
    info: TokenInfo, policy: AuthPolicy, creds: Credentials, apps: AppRegistry, now: float
) -> None:
    """Raise the SPEC section 4 error when the token may not use the route; return otherwise."""
    if policy.appsecret_proof != "off":
        check_proof(info, policy, creds, apps, now)
    if policy.grants is not None and info.grant not in policy.grants:
        raise InsufficientGrantError(reason="grant_not_allowed")
    if not policy.required_scopes <= info.scopes:
        raise InsufficientScopeError(policy.scopes, reason="scope_missing")


def check_proof(
    info: TokenInfo, policy: AuthPolicy, creds: Credentials, apps: AppRegistry, now: float
) -> None:
    """SPEC section 5: a missing proof is 400 when required; a wrong one is always 403."""
    if creds.proof is None:
        if policy.appsecret_proof == "required":
            raise InvalidRequestError(reason="proof_missing")
        return
    time = creds.proof_time
    if time is not None and not _TIME.fullmatch(time):
        raise InvalidRequestError(reason="proof_time_malformed")
    app = apps.get(info.client_id)
    if app is None or creds.token is None:
        raise InvalidProofError(reason="proof_unknown_app")
    if time is not None and abs(now - int(time)) > app.proof_max_age:
        raise InvalidProofError(reason="proof_time_out_of_range")
    proof = creds.proof.lower()
    if not proof or not _HEX.issuperset(proof):
        raise InvalidProofError(reason="proof_malformed")
    if not app.matches(proof_message(creds.token, time), proof.encode("ascii")):
        raise InvalidProofError(reason="proof_mismatch")
