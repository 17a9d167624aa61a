"""appsecret_proof computation (SPEC section 5)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.proof import compute_proof, proof_message

CASES = [
    ("tok", "secret", None, b"tok", "no-time"),
    ("tok", "secret", 1700000000, b"tok|1700000000", "with-time"),
    ("tok", "secret", -5, b"tok|-5", "negative-time"),
    ("tok", "s\u00e9cret", 0, b"tok|0", "utf8-secret-zero-time"),
]


@pytest.mark.parametrize(
    ("token", "secret", "time", "message"),
    [c[:4] for c in CASES],
    ids=[c[4] for c in CASES],
)
def test_compute_proof(token: str, secret: str, time: int | None, message: bytes) -> None:
    """The proof is the lower-case hex HMAC-SHA256 of the token (or `token|time`) by the secret."""
    expected = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    assert compute_proof(token, secret, time) == expected
    assert compute_proof(token, secret, time) == compute_proof(token, secret, time).lower()


def test_known_vector() -> None:
    """A fixed vector, so the CLI and any client library can be checked against it."""
    assert compute_proof("abc", "key") == (
        "9c196e32dc0175f86f4b1cb89289d6619de6bee699e4c378e68309ed97a1a6ab"
    )


def test_proof_message() -> None:
    """The signed message keeps appsecret_time exactly as sent."""
    assert proof_message("t") == b"t"
    assert proof_message("t", "0012") == b"t|0012"
