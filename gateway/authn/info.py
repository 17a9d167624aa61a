"""TokenInfo: what a token source says about an active token."""

from __future__ import annotations

from dataclasses import dataclass


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
