"""Revocation (SPEC section 6): recorded in Redis, applied by every replica within a second."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from structlog.testing import capture_logs

from gateway.authn.cache import TokenDigest
from gateway.config import parse_config
from gateway.errors import ConfigError, InvalidTokenError, StoreUnavailableError
from gateway.tokens_cli import issue_token, revoke_token
from tests.fixtures.idp import ONE_ROUTE, peek

STORE = {"type": "store"}


async def wait_until(predicate, timeout: float = 3.0) -> float:
    """Seconds until predicate() holds (polled every millisecond); fails after timeout."""
    started = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - started < timeout, "condition not reached"
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


def refused(v, token) -> bool:
    try:
        return peek(v, token) is None
    except InvalidTokenError:
        return True


async def test_revocation_reaches_another_replica_within_a_second(make_validator, idp, redis_url):
    """Two validators sharing Redis: B stops accepting A's revoked token in well under 1 s."""
    idp.tokens["tok"] = idp.claims()
    a = await make_validator([STORE, idp.introspection_source()], redis_url)
    b = await make_validator([STORE, idp.introspection_source()], redis_url)
    await a.validate("tok")
    await b.validate("tok")
    assert peek(b, "tok") is not None
    started = time.perf_counter()
    await a.revoke("tok")
    elapsed = await wait_until(lambda: refused(b, "tok"))
    total = time.perf_counter() - started
    print(f"\nrevocation propagation: {elapsed * 1000:.2f} ms after revoke() returned "
          f"({total * 1000:.2f} ms from the call)")  # fmt: skip
    assert elapsed < 1.0
    for v in (a, b):
        with pytest.raises(InvalidTokenError):
            await v.validate("tok")
    assert idp.introspect_calls == 1


async def test_revoke_records_everything_in_redis(make_validator, redis_url):
    """The store record and shared entry go; a mark lives until exp; the log and channel get it."""
    v = await make_validator([STORE], redis_url)
    token = await v.issue("implicit", "spa")
    exp = (await v.validate(token)).expires_at
    await v.revoke(token)
    digest = TokenDigest.of(token).hex
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.get(f"gw:token:{digest}") is None
        assert r.get(f"gw:cache:{digest}") is None
        mark_ttl = r.ttl(f"gw:revoked:{digest}")
        log = r.xrange("gw:revocations:log")
        keys = r.keys("*")
    assert exp - time.time() < mark_ttl <= exp - time.time() + 62
    assert log[-1][1]["r"].startswith(digest)
    assert token not in repr(keys)


async def test_lost_pubsub_message_is_bridged_by_the_poller(make_validator, idp, redis_url):
    """A revocation only in the stream (pub/sub message lost) still applies within ~1 s."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator([idp.introspection_source()], redis_url)
    await v.validate("tok")
    until = time.time() + 3600
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        r.xadd("gw:revocations:log", {"r": f"{TokenDigest.of('tok').hex} {until}"})
    elapsed = await wait_until(lambda: refused(v, "tok"), timeout=2.5)
    print(f"\nrevocation via poller only: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.5


async def test_a_replica_started_later_sees_the_mark(make_validator, idp, redis_url):
    """A validator that missed the message refuses the token from the Redis mark, without the IdP."""
    idp.tokens["tok"] = idp.claims()
    a = await make_validator([idp.introspection_source()], redis_url)
    await a.validate("tok")
    await a.revoke("tok")
    await a.close()
    b = await make_validator([idp.introspection_source()], redis_url)
    b.revocations.local.revoked.clear()  # as if the stream had been trimmed
    with pytest.raises(InvalidTokenError):
        await b.validate("tok")
    assert idp.introspect_calls == 1


async def test_revoked_set_applies_during_a_redis_outage(
    make_validator, idp, redis_url, redis_server
):
    """Revocations already received keep applying while Redis is down."""
    idp.tokens["tok"] = idp.claims()
    cache = {"ttl": "100ms", "stale_if_error": "10m"}
    a = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    b = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    await b.validate("tok")
    await a.revoke("tok")
    await wait_until(lambda: refused(b, "tok"))
    redis_server.stop()
    await asyncio.sleep(0.15)
    with pytest.raises(InvalidTokenError):
        await b.validate("tok")  # the IdP still says active; the revoked set wins


async def test_revoke_with_redis_down_is_503_but_applies_locally(
    make_validator, idp, redis_url, redis_server
):
    """Redis unreachable on revoke: StoreUnavailableError, yet this process refuses the token."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator([idp.introspection_source()], redis_url)
    await v.validate("tok")
    redis_server.stop()
    with pytest.raises(StoreUnavailableError):
        await v.revoke("tok")
    with pytest.raises(InvalidTokenError):
        await v.validate("tok")


async def test_revoke_without_redis(make_validator):
    """Without Redis the revocation is recorded in memory and the record forgotten."""
    v = await make_validator([STORE])
    token = await v.issue("authorization_code", "web-app")
    await v.validate(token)
    await v.revoke(token)
    assert await v.store.lookup(TokenDigest.of(token).hex) is None
    with pytest.raises(InvalidTokenError):
        await v.validate(token)


async def test_lookup_in_flight_during_revoke_is_refused(make_validator, idp):
    """An answer arriving after the revocation of its token is not used nor cached."""
    idp.tokens["tok"] = idp.claims()
    idp.introspect_mode, idp.delay = "slow", 0.2
    v = await make_validator([idp.introspection_source()])
    pending = asyncio.create_task(v.validate("tok"))
    await asyncio.sleep(0.05)
    await v.revoke("tok")
    with pytest.raises(InvalidTokenError):
        await pending
    assert peek(v, "tok") is None


async def test_rfc7009_revocation_is_called(make_validator, idp, redis_url):
    """With revocation_url the IdP is told too (RFC 7009, same client authentication)."""
    idp.tokens["tok"] = idp.claims()
    src = idp.introspection_source(revocation_url=f"{idp.url}/revoke")
    v = await make_validator([src], redis_url)
    await v.validate("tok")
    await v.revoke("tok")
    await wait_until(lambda: idp.revoked_tokens == ["tok"])
    assert idp.auth_methods[-1] == "basic"


async def test_rfc7009_failure_is_retried_then_logged(make_validator, idp):
    """A failing revocation endpoint is retried a few times, then logged; revoke() succeeds."""
    idp.revoke_mode = "fail"
    src = idp.introspection_source(revocation_url=f"{idp.url}/revoke")
    v = await make_validator([src])
    with capture_logs() as logs:
        await v.revoke("secret-value-9")
        await wait_until(lambda: any(e["event"] == "remote_revocation_failed" for e in logs))
    assert idp.revoke_calls == 4
    assert "secret-value-9" not in repr(logs)


async def test_cli_issue_and_revoke(redis_url, idp):
    """`gateway token issue` / `revoke` write to and revoke from the configured Redis store."""
    cfg = parse_config({
        "redis": {"url": redis_url, "key_prefix": "gw:"},
        "tokens": {"sources": [STORE, idp.introspection_source(revocation_url=f"{idp.url}/revoke")]},
        **ONE_ROUTE,
    }, env={})  # fmt: skip
    token = await issue_token(cfg, "code", "web-app", "alice", "read", None)
    key = f"gw:token:{TokenDigest.of(token).hex}"
    with redis.Redis.from_url(redis_url) as r:
        assert r.exists(key)
    await revoke_token(cfg, token)
    with redis.Redis.from_url(redis_url) as r:
        assert not r.exists(key)
        assert r.exists(f"gw:revoked:{TokenDigest.of(token).hex}")
    assert idp.revoked_tokens == [token]


async def test_cli_needs_redis():
    """Without `redis:` the CLI commands refuse with a config error naming the key."""
    cfg = parse_config({"tokens": {"sources": [STORE]}, **ONE_ROUTE}, env={})
    with pytest.raises(ConfigError, match="redis"):
        await issue_token(cfg, "implicit", "spa")
    with pytest.raises(ConfigError, match="redis"):
        await revoke_token(cfg, "t")


@pytest.mark.parametrize("deployment", ["sentinel", "cluster"])
async def test_store_and_revocation_through_sentinel_and_cluster(
    make_validator, request, deployment
):
    """`redis+sentinel://` and `cluster: true`: issue, validate, and cross-replica revocation."""
    if deployment == "sentinel":
        request.getfixturevalue("redis_url")  # the master, running and empty
    url = request.getfixturevalue(f"redis_{deployment}").url
    cluster = deployment == "cluster"
    a = await make_validator([STORE], url, cluster=cluster)
    b = await make_validator([STORE], url, cluster=cluster)
    assert a.revocations.subscribed.is_set() and b.revocations.subscribed.is_set()
    token = await a.issue("authorization_code", "web-app", "alice")
    assert (await b.validate(token)).subject == "alice"
    await a.revoke(token)
    elapsed = await wait_until(lambda: refused(b, token))
    assert elapsed < 1.0
    with pytest.raises(InvalidTokenError):
        await b.validate(token)


async def test_close_ends_a_background_task_that_swallows_one_cancellation(make_validator):
    """Revocations.close() cancels its tasks until they end: a listener whose library swallows
    one cancellation (redis-py's pub/sub read over TLS did, now and then) must not survive."""
    v = await make_validator([STORE])
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # swallowed: carry on as if nothing happened
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    v.revocations._tasks.append(task)
    await asyncio.sleep(0)
    await asyncio.wait_for(v.revocations.close(), 5)
    assert swallowed.is_set()
    assert task.cancelled()
