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
    issued_at: float | None = None
    source: str = ""  # store | jwt | introspection


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
