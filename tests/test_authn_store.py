"""The token store (SPEC section 9) and the `store` source, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
from structlog.testing import capture_logs

from gateway.authn.cache import TokenDigest
from gateway.authn.grants import default_lifetime
from gateway.errors import InvalidTokenError, ValidatorUnavailableError
from tests.fixtures.idp import peek

STORE = [{"type": "store"}]


def sync_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


async def test_issue_writes_the_spec_record_with_exat(make_validator, redis_url):
    """An issued token is stored as the SPEC section 9 JSON under its sha256, expiring at exp."""
    v = await make_validator(STORE, redis_url)
    token = await v.issue("authorization_code", "web-app", "alice", "read  write")
    key = f"gw:token:{TokenDigest.of(token).hex}"
    with sync_redis(redis_url) as r:
        record = json.loads(r.get(key))
        expire_at = r.expiretime(key)
        dump = [(k, r.get(k)) for k in r.keys("*")]
    assert set(record) == {"client_id", "sub", "scope", "grant_type", "exp", "iat"}
    assert record["grant_type"] == "authorization_code"
    assert record["scope"] == "read write"
    assert expire_at == record["exp"]
    assert record["exp"] - record["iat"] == 365 * 86400
    assert token not in repr(dump)


@pytest.mark.parametrize(
    ("grant", "seconds"),
    [
        ("authorization_code", 365 * 86400),
        ("implicit", 6 * 3600),
        ("client_credentials", 3600),
        ("password", 3600),
        ("refresh_token", 3600),
    ],
    ids=["code-365d", "implicit-6h", "client-credentials-1h", "password-1h", "refresh-1h"],
)
async def test_default_lifetimes(make_validator, grant, seconds):
    """Minted tokens live for their grant's default lifetime when no ttl is given."""
    v = await make_validator(STORE)
    assert default_lifetime(grant) == seconds
    info = await v.validate(await v.issue(grant, "web-app"))
    assert info.expires_at is not None
    assert abs(info.expires_at - time.time() - seconds) < 5
    assert info.grant == grant


async def test_issue_accepts_aliases_and_refuses_unknown_grants(make_validator):
    """`code` and `token` are aliases of authorization_code and implicit; `unknown` is refused."""
    v = await make_validator(STORE)
    assert (await v.validate(await v.issue("code", "c"))).grant == "authorization_code"
    assert (await v.validate(await v.issue("token", "c"))).grant == "implicit"
    with pytest.raises(ValueError, match="unknown grant"):
        await v.issue("unknown", "c")
    with pytest.raises(ValueError, match="positive"):
        await v.issue("implicit", "c", ttl_seconds=0)


async def test_store_source_answers_with_the_record(make_validator, redis_url):
    """A stored token validates with the record's subject, client, scope and grant."""
    v = await make_validator(STORE, redis_url)
    token = await v.issue("implicit", "spa", "bob", "read", ttl_seconds=120)
    info = await v.validate(token)
    assert (info.subject, info.client_id, info.scope, info.grant, info.source) == (
        "bob", "spa", "read", "implicit", "store",
    )  # fmt: skip
    assert info.scopes == frozenset({"read"})


async def test_external_issuer_records_are_read(make_validator, redis_url):
    """A record written by another issuer (grant alias `code`, extra fields) is understood."""
    v = await make_validator(STORE, redis_url)
    token = "external-opaque-token-123"
    exp = int(time.time()) + 600
    record = {"client_id": "x", "sub": "u", "scope": "a b", "grant_type": "code", "exp": exp,
              "iat": exp - 600, "issuer": "other"}  # fmt: skip
    with sync_redis(redis_url) as r:
        r.set(f"gw:token:{TokenDigest.of(token).hex}", json.dumps(record), exat=exp)
    info = await v.validate(token)
    assert info.grant == "authorization_code"
    assert info.scopes == frozenset({"a", "b"})


async def test_unknown_token_is_invalid_with_store_only(make_validator, redis_url):
    """A token the store does not hold, with no other source, is invalid (401)."""
    v = await make_validator(STORE, redis_url)
    with pytest.raises(InvalidTokenError):
        await v.validate("never-issued")


async def test_store_miss_falls_through_to_introspection(make_validator, redis_url, idp):
    """The store does not know the token: the next source (introspection) answers."""
    idp.tokens["idp-token"] = idp.claims(sub="carol")
    v = await make_validator([*STORE, idp.introspection_source()], redis_url)
    info = await v.validate("idp-token")
    assert (info.subject, info.source) == ("carol", "introspection")


async def test_memory_store_without_redis(make_validator):
    """Without `redis:` the store lives in process, with the same interface."""
    v = await make_validator(STORE)
    token = await v.issue("client_credentials", "svc", None, "jobs")
    assert (await v.validate(token)).client_id == "svc"
    await v.store.delete(TokenDigest.of(token).hex)
    assert await v.store.lookup(TokenDigest.of(token).hex) is None


async def test_expired_memory_record_is_gone(make_validator):
    """A record past its exp is no longer found."""
    v = await make_validator(STORE)
    token = await v.issue("implicit", "spa", ttl_seconds=1)
    await asyncio.sleep(1.05)
    assert await v.store.lookup(TokenDigest.of(token).hex) is None
    with pytest.raises(InvalidTokenError):
        await v.validate(token)


async def test_redis_outage_falls_through_then_recovers(
    make_validator, redis_server, redis_url, idp
):
    """Redis killed: store tokens get 503, IdP tokens still pass; one log line; then recovery."""
    idp.tokens["idp-token"] = idp.claims()
    v = await make_validator([*STORE, idp.introspection_source()], redis_url)
    store_token = await v.issue("authorization_code", "web-app", "alice")
    with capture_logs() as logs:
        redis_server.stop()
        for _ in range(5):
            with pytest.raises(ValidatorUnavailableError):
                await v.validate(store_token)  # the IdP says inactive, but the store might know
        assert (await v.validate("idp-token")).source == "introspection"
        redis_server.start()
        deadline = time.monotonic() + 3
        fresh = await v.issue("implicit", "spa")  # a forced write reconnects at once
        while True:
            try:
                info = await v.validate(fresh)
                break
            except ValidatorUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    assert info.source == "store"
    events = [e["event"] for e in logs]
    assert events.count("redis_unavailable") == 1
    assert "redis_recovered" in events


async def test_redis_outage_does_not_extend_cached_answers(make_validator, redis_server, redis_url):
    """During a Redis outage a cached store answer lasts `ttl`, never `ttl + stale_if_error`."""
    cache = {"ttl": "300ms", "stale_if_error": "10m"}
    v = await make_validator(STORE, redis_url, cache=cache)
    token = await v.issue("authorization_code", "web-app", "alice")
    await v.validate(token)
    redis_server.stop()
    assert peek(v, token) is not None
    await asyncio.sleep(0.35)
    assert peek(v, token) is None
    with pytest.raises(ValidatorUnavailableError):
        await v.validate(token)


async def test_redis_skipped_during_backoff(make_validator, redis_server, redis_url):
    """While Redis is down, requests skip it fast instead of waiting for a connection each."""
    v = await make_validator(STORE, redis_url)
    redis_server.stop()
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("t0")
    started = time.perf_counter()
    for i in range(200):
        with pytest.raises(ValidatorUnavailableError):
            await v.validate(f"t{i + 1}")
    assert time.perf_counter() - started < 1.0
