"""appsecret_proof (SPEC section 5): hex(HMAC-SHA256(key=app_secret, msg=token[|time]))."""

from __future__ import annotations

import hashlib
import hmac


def proof_message(token: str, time: str | None = None) -> bytes:
    """The signed message: the token, or `token|time` when appsecret_time is sent."""
    return (token if time is None else f"{token}|{time}").encode("utf-8")


def compute_proof(token: str, secret: str, time: int | None = None) -> str:
    """The lower-case hex appsecret_proof a client sends for `token` (and `time`, if given)."""
    message = proof_message(token, None if time is None else str(time))
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
