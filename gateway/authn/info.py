"""TokenInfo: what a token source says about an active token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An active token's identity; immutable, shared by every request that presents it."""

    subject: str | None
    client_id: str | None
    scope: str  # space-separated, as issued
    scopes: frozenset[str]
    grant: str  # mapped grant name: authorization_code | implicit | ... | unknown
    expires_at: float | None  # Unix seconds
    source: str = ""  # store | jwt | introspection
    #: `aud` (RFC 7519 / RFC 7662 / the store record): the resources it was issued for
    audience: frozenset[str] = frozenset()
    #: `cnf.jkt` (RFC 9449): the SHA-256 thumbprint of the DPoP key it is bound to
    jkt: str | None = None
    #: `cnf["x5t#S256"]` (RFC 8705): the SHA-256 thumbprint of the certificate it is bound to
    x5t: str | None = None

    @property
    def cnf(self) -> dict[str, str] | None:
        """The confirmation (`cnf`) member as a source gave it, or None for a bearer token."""
        if self.jkt is None and self.x5t is None:
            return None
        cnf: dict[str, str] = {}
        if self.jkt is not None:
            cnf["jkt"] = self.jkt
        if self.x5t is not None:
            cnf["x5t#S256"] = self.x5t
        return cnf

    @property
    def binding(self) -> str | None:
        """`dpop` or `mtls` for a sender-constrained token (X-Auth-Binding), else None."""
        if self.jkt is not None:
            return "dpop"
        return "mtls" if self.x5t is not None else None


_SCOPE_SETS: Final[dict[str, frozenset[str]]] = {}
_SCOPE_SETS_MAX: Final = 10_000


def scope_set(scope: str) -> frozenset[str]:
    """The set of a scope string, shared by every token with that scope (memory per cached
    token matters: 100,000 tokens with one scope string keep one frozenset, not 100,000)."""
    found = _SCOPE_SETS.get(scope)
    if found is None:
        found = frozenset(scope.split())
        if len(_SCOPE_SETS) < _SCOPE_SETS_MAX:
            _SCOPE_SETS[scope] = found
    return found


_AUDIENCES: Final[dict[str, frozenset[str]]] = {}
_NO_AUDIENCE: Final[frozenset[str]] = frozenset()


def audience_set(aud: object) -> frozenset[str]:
    """The audiences of an `aud` value (a string or an array of strings), one shared set per
    value seen (most tokens of a deployment name the same one or two)."""
    if isinstance(aud, str):
        if not aud:
            return _NO_AUDIENCE
        found = _AUDIENCES.get(aud)
        if found is None:
            found = frozenset((aud,))
            if len(_AUDIENCES) < _SCOPE_SETS_MAX:
                _AUDIENCES[aud] = found
        return found
    if isinstance(aud, list | tuple):
        names = [a for a in aud if isinstance(a, str) and a]
        if len(names) == 1:
            return audience_set(names[0])
        key = "\n".join(names)
        found = _AUDIENCES.get(key)
        if found is None:
            found = frozenset(names)
            if len(_AUDIENCES) < _SCOPE_SETS_MAX:
                _AUDIENCES[key] = found
        return found
    return _NO_AUDIENCE


_SHARED_STRS: Final[dict[str, str]] = {}


def shared_str(value: str | None) -> str | None:
    """One copy of a value many tokens carry (client ids, scope strings): each cached token
    would otherwise keep its own copy. Bounded like the scope sets; never interned for good."""
    if value is None:
        return None
    found = _SHARED_STRS.get(value)
    if found is None:
        if len(_SHARED_STRS) >= _SCOPE_SETS_MAX:
            return value
        _SHARED_STRS[value] = found = value
    return found
