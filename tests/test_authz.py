"""Authorization without I/O: appsecret_proof first, then grants, then scopes."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.authn.info import TokenInfo
from gateway.authz import AppRegistry, authorize
from gateway.config import parse_config
from gateway.errors import (
    GatewayError,
    InsufficientGrantError,
    InsufficientScopeError,
    InvalidProofError,
    InvalidRequestError,
)
from gateway.extract import Credentials
from gateway.proof import compute_proof
from gateway.routing import Route, RouteTable

NOW = 1_700_000_000.0
TOKEN = "the-token"
SECRET = "current-secret"
OLD = "old-secret"


def setup(**route: Any) -> tuple[Route, AppRegistry]:
    """A route and the app registry from one real config."""
    cfg = parse_config(
        {
            "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
            "apps": [
                {"client_id": "web", "secrets": [SECRET, OLD, ""], "proof_max_age": "5m"},
                {"client_id": "other", "secrets": ["other-secret"]},
            ],
            "routes": [{"name": "r", "path_prefix": "/", "upstream": "api", **route}],
        }
    )
    return RouteTable.from_config(cfg).routes[0], AppRegistry.from_config(cfg)


def info(
    client_id: str | None = "web",
    grant: str = "authorization_code",
    scope: str = "read write",
) -> TokenInfo:
    return TokenInfo(
        subject="u1",
        client_id=client_id,
        scope=scope,
        scopes=frozenset(scope.split()),
        grant=grant,
        expires_at=NOW + 3600,
    )


def creds(proof: str | None = None, time: str | None = None, token: str = TOKEN) -> Credentials:
    return Credentials(token=token, in_query=False, in_form=False, proof=proof, proof_time=time)


def check(
    route: Route, apps: AppRegistry, tok: TokenInfo | None = None, c: Credentials | None = None
) -> None:
    assert route.auth is not None
    authorize(tok or info(), route.auth, c or creds(), apps, NOW)


GOOD = compute_proof(TOKEN, SECRET)
TIMED = compute_proof(TOKEN, SECRET, int(NOW))

PROOF_OK = [
    ("required", GOOD, None, "required-good"),
    ("required", GOOD.upper(), None, "upper-case-hex"),
    ("required", compute_proof(TOKEN, OLD), None, "rotated-secret"),
    ("required", TIMED, str(int(NOW)), "with-time"),
    ("required", compute_proof(TOKEN, SECRET, int(NOW) - 300), str(int(NOW) - 300), "oldest"),
    ("required", compute_proof(TOKEN, SECRET, int(NOW) + 300), str(int(NOW) + 300), "future"),
    ("optional", None, None, "optional-missing"),
    ("optional", GOOD, None, "optional-good"),
    ("off", None, None, "off-missing"),
    ("off", "not-even-hex", "garbage", "off-ignores-anything"),
]


@pytest.mark.parametrize(
    ("mode", "proof", "time"),
    [c[:3] for c in PROOF_OK],
    ids=[c[3] for c in PROOF_OK],
)
def test_proof_accepted(mode: str, proof: str | None, time: str | None) -> None:
    """A correct proof (any secret, any hex case, time in range) or an unneeded one passes."""
    route, apps = setup(appsecret_proof=mode)
    check(route, apps, c=creds(proof, time))


PROOF_REFUSED: list[tuple[str, str | None, str | None, str | None, type[GatewayError], str]] = [
    ("required", None, None, "web", InvalidRequestError, "required-missing"),
    ("required", "00" * 32, None, "web", InvalidProofError, "wrong"),
    ("optional", "00" * 32, None, "web", InvalidProofError, "optional-wrong"),
    ("required", GOOD[:-2], None, "web", InvalidProofError, "too-short"),
    ("required", GOOD + "00", None, "web", InvalidProofError, "too-long"),
    ("required", "", None, "web", InvalidProofError, "empty"),
    ("required", GOOD[:-1] + "g", None, "web", InvalidProofError, "non-hex"),
    ("required", GOOD[:-1] + "\u00e9", None, "web", InvalidProofError, "non-ascii"),
    ("required", GOOD, None, "other", InvalidProofError, "other-apps-secret"),
    ("required", GOOD, None, "nobody", InvalidProofError, "unknown-app"),
    ("required", GOOD, None, None, InvalidProofError, "token-without-client-id"),
    ("required", GOOD, str(int(NOW)), "web", InvalidProofError, "time-not-signed"),
    ("required", TIMED, None, "web", InvalidProofError, "time-signed-not-sent"),
    ("required", TIMED, "1.5", "web", InvalidRequestError, "time-not-integer"),
    ("required", TIMED, "", "web", InvalidRequestError, "time-empty"),
    ("required", TIMED, "1" * 13, "web", InvalidRequestError, "time-too-many-digits"),
    ("required", TIMED, f"{int(NOW)}\n", "web", InvalidRequestError, "time-newline"),
    ("required", TIMED, "\u0661", "web", InvalidRequestError, "time-unicode-digit"),
    (
        "required",
        compute_proof(TOKEN, SECRET, int(NOW) - 301),
        str(int(NOW) - 301),
        "web",
        InvalidProofError,
        "too-old",
    ),
    (
        "required",
        compute_proof(TOKEN, SECRET, int(NOW) + 301),
        str(int(NOW) + 301),
        "web",
        InvalidProofError,
        "too-far-in-future",
    ),
]


@pytest.mark.parametrize(
    ("mode", "proof", "time", "client_id", "error"),
    [c[:5] for c in PROOF_REFUSED],
    ids=[c[5] for c in PROOF_REFUSED],
)
def test_proof_refused(
    mode: str, proof: str | None, time: str | None, client_id: str | None, error: type[Exception]
) -> None:
    """Missing-when-required and malformed time are 400; every other proof problem is 403."""
    route, apps = setup(appsecret_proof=mode)
    with pytest.raises(error) as raised:
        check(route, apps, info(client_id=client_id), creds(proof, time))
    assert type(raised.value) is error
    assert TOKEN not in str(raised.value)


def test_proof_checked_before_grant_and_scope() -> None:
    """A wrong proof is reported even when the grant and scopes are also wrong."""
    route, apps = setup(appsecret_proof="required", grants=["authorization_code"], scopes=["x"])
    with pytest.raises(InvalidProofError):
        check(route, apps, info(grant="implicit", scope=""), creds("00"))


GRANTS = [
    (None, "implicit", True, "no-restriction"),
    (["authorization_code"], "authorization_code", True, "allowed"),
    (["authorization_code"], "implicit", False, "implicit-on-code-route"),
    (["authorization_code", "implicit"], "implicit", True, "one-of-several"),
    (["authorization_code"], "unknown", False, "unknown-grant"),
    (["unknown"], "unknown", True, "unknown-allowed-explicitly"),
]


@pytest.mark.parametrize(
    ("grants", "grant", "ok"), [c[:3] for c in GRANTS], ids=[c[3] for c in GRANTS]
)
def test_grants(grants: list[str] | None, grant: str, ok: bool) -> None:
    """A token whose grant is not in the route's `grants` is insufficient_grant."""
    route, apps = setup(grants=grants) if grants is not None else setup()
    if ok:
        check(route, apps, info(grant=grant))
    else:
        with pytest.raises(InsufficientGrantError):
            check(route, apps, info(grant=grant))


def test_grant_checked_before_scope() -> None:
    """A token with the wrong grant and missing scopes is refused for its grant."""
    route, apps = setup(grants=["authorization_code"], scopes=["admin"])
    with pytest.raises(InsufficientGrantError):
        check(route, apps, info(grant="implicit", scope=""))


SCOPES = [
    ([], "", True, "none-required"),
    (["read"], "read write", True, "subset"),
    (["read", "write"], "write read", True, "all"),
    (["admin"], "read write", False, "missing"),
    (["read", "admin"], "read", False, "one-missing"),
    (["read"], "", False, "token-without-scopes"),
    (["read"], "READ", False, "case-sensitive"),
]


@pytest.mark.parametrize(
    ("required", "scope", "ok"), [c[:3] for c in SCOPES], ids=[c[3] for c in SCOPES]
)
def test_scopes(required: list[str], scope: str, ok: bool) -> None:
    """Every scope of the route must be in the token's scopes."""
    route, apps = setup(scopes=required)
    if ok:
        check(route, apps, info(scope=scope))
    else:
        with pytest.raises(InsufficientScopeError) as raised:
            check(route, apps, info(scope=scope))
        assert raised.value.scope == " ".join(sorted(required))


def test_registry_from_config() -> None:
    """Apps are found by client_id; a missing or empty client_id finds nothing."""
    _, apps = setup()
    app = apps.get("web")
    assert app is not None
    assert app.proof_max_age == 300
    assert len(app.keyed) == 2  # the empty secret was dropped by the config
    assert apps.get("nobody") is None
    assert apps.get(None) is None
    assert apps.get("") is None
