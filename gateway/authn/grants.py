"""Reading a token's identity from claims: grant mapping (`tokens.grant`), scope, lifetimes.

The same rules apply to a store record, an introspection answer and JWT claims, so a token
means the same thing whichever source vouches for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.authn.info import TokenInfo, audience_set, scope_set, shared_str
from gateway.config.models import GRANTS, GrantConfig

#: Lifetimes of tokens minted by `gateway token issue` when no --ttl is given (SPEC section 1).
DEFAULT_LIFETIMES: Mapping[str, float] = {
    "authorization_code": 365 * 86400.0,
    "implicit": 6 * 3600.0,
}
#: Lifetime for every other grant (client_credentials, password, refresh_token): one hour.
FALLBACK_LIFETIME = 3600.0

#: Grants a token can be minted for (`unknown` is only ever a reading, never an issuance).
ISSUABLE_GRANTS = frozenset(GRANTS - {"unknown"})


def default_lifetime(grant: str) -> float:
    """Seconds a token minted for `grant` lives when no lifetime is given."""
    return DEFAULT_LIFETIMES.get(grant, FALLBACK_LIFETIME)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class GrantMapper:
    """Maps the grant claim's value to a grant name; unmapped or absent values are `unknown`."""

    def __init__(self, cfg: GrantConfig) -> None:
        self.claim = cfg.claim
        self._values = dict(cfg.values)

    def map(self, value: Any) -> str:
        """The grant name for a claim value, per `tokens.grant.values`."""
        if not isinstance(value, str):
            return "unknown"
        return self._values.get(value, "unknown")

    def from_claims(self, claims: Mapping[str, Any]) -> str:
        """The grant named by `claims[claim]`."""
        return self.map(claims.get(self.claim))

    def from_record(self, record: Mapping[str, Any]) -> str:
        """A store record's grant: the configured claim, else its `grant_type` field.

        Records hold canonical grant names (SPEC section 9), which count even when
        `tokens.grant.values` does not list them.
        """
        value = record.get(self.claim, record.get("grant_type"))
        grant = self.map(value)
        if grant == "unknown" and isinstance(value, str) and value in ISSUABLE_GRANTS:
            return value
        return grant

    def canonical(self, name: str) -> str:
        """The grant name for `name` given to `gateway token issue` (alias or canonical)."""
        if name in ISSUABLE_GRANTS:
            return name
        mapped = self._values.get(name)
        if mapped is None or mapped == "unknown":
            raise ValueError(f"unknown grant {name!r}; known: {sorted(ISSUABLE_GRANTS)}")
        return mapped


def scope_of(claims: Mapping[str, Any]) -> str:
    """Space-separated scope from `scope` (string or list) or `scp` (list, RFC 9068 practice)."""
    for key in ("scope", "scp"):
        value = claims.get(key)
        if isinstance(value, str):
            return " ".join(value.split())
        if isinstance(value, list | tuple):
            return " ".join(str(v) for v in value if isinstance(v, str) and v)
    return ""


def confirmation(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """`cnf.jkt` (RFC 9449) and `cnf["x5t#S256"]` (RFC 8705); other confirmation methods are
    not ours to judge (RFC 7800: members not understood are ignored)."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping):
        return None, None
    return _str(cnf.get("jkt")), _str(cnf.get("x5t#S256"))


def info_from_claims(claims: Mapping[str, Any], grant: str, source: str) -> TokenInfo:
    """A TokenInfo from RFC 7662 / RFC 9068 / store fields.

    Subject is `sub`, else `username`; client is `client_id`, else `azp`; the audience is `aud`
    (a string or an array), the binding `cnf`.
    """
    scope = shared_str(scope_of(claims)) or ""
    jkt, x5t = confirmation(claims)
    return TokenInfo(
        subject=_str(claims.get("sub")) or _str(claims.get("username")),
        client_id=shared_str(_str(claims.get("client_id")) or _str(claims.get("azp"))),
        scope=scope,
        scopes=scope_set(scope),
        grant=grant,
        expires_at=_number(claims.get("exp")),
        source=source,
        audience=audience_set(claims.get("aud")),
        jkt=jkt,
        x5t=x5t,
    )
