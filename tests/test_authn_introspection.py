"""The `introspection` source (RFC 7662) against a real aiohttp authorization server."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from structlog.testing import capture_logs

from gateway.authn.introspection import basic_auth
from gateway.errors import InvalidTokenError, ValidatorUnavailableError
from tests.fixtures.idp import peek


async def test_active_token_fields(make_validator, idp):
    """An active answer gives subject, client, scope, exp, iat and grant."""
    claims = idp.claims(sub="alice", client_id="web-app", scope="read write")
    idp.tokens["tok-1"] = claims
    v = await make_validator([idp.introspection_source()])
    info = await v.validate("tok-1")
    assert (info.subject, info.client_id, info.scope, info.grant, info.source) == (
        "alice", "web-app", "read write", "authorization_code", "introspection",
    )  # fmt: skip
    assert info.expires_at == claims["exp"]
    assert idp.auth_methods == ["basic"]


def test_basic_auth_form_urlencodes_id_and_secret():
    """client_secret_basic encodes id and secret with form-urlencoding first (RFC 6749 2.3.1)."""
    value = basic_auth("my client", "p:w&+%")
    assert base64.b64decode(value.removeprefix("Basic ")) == b"my+client:p%3Aw%26%2B%25"


async def test_client_secret_post(make_validator, idp):
    """client_secret_post sends the credentials in the form instead."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator([idp.introspection_source(auth_method="client_secret_post")])
    await v.validate("tok")
    assert idp.auth_methods == ["post"]


async def test_username_is_the_subject_fallback(make_validator, idp):
    """Without `sub`, RFC 7662's `username` is the subject."""
    idp.tokens["tok"] = idp.claims(sub=None, username="bob")
    v = await make_validator([idp.introspection_source()])
    assert (await v.validate("tok")).subject == "bob"


async def test_inactive_is_invalid_and_cached_for_negative_ttl(make_validator, idp):
    """`active: false` is a 401, reused for negative_ttl without asking again."""
    v = await make_validator([idp.introspection_source()], cache={"negative_ttl": "300ms"})
    for _ in range(3):
        with pytest.raises(InvalidTokenError):
            await v.validate("nope")
    assert idp.introspect_calls == 1
    with pytest.raises(InvalidTokenError):
        peek(v, "nope")
    await asyncio.sleep(0.35)
    assert peek(v, "nope") is None
    with pytest.raises(InvalidTokenError):
        await v.validate("nope")
    assert idp.introspect_calls == 2


async def test_exp_in_the_past_is_invalid(make_validator, idp):
    """An active answer whose exp has passed is still refused."""
    idp.tokens["old"] = idp.claims(exp=int(time.time()) - 5)
    v = await make_validator([idp.introspection_source()])
    with pytest.raises(InvalidTokenError):
        await v.validate("old")


async def test_positive_answer_cached_for_ttl(make_validator, idp):
    """A positive answer is reused for cache.ttl, then asked again."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator([idp.introspection_source()], cache={"ttl": "300ms"})
    for _ in range(5):
        await v.validate("tok")
    assert idp.introspect_calls == 1
    await asyncio.sleep(0.35)
    await v.validate("tok")
    assert idp.introspect_calls == 2


async def test_positive_answer_never_cached_past_exp(make_validator, idp):
    """A token expiring before cache.ttl is dropped at its exp."""
    idp.tokens["short"] = idp.claims(exp=int(time.time()) + 1)
    v = await make_validator([idp.introspection_source()], cache={"ttl": "5m"})
    await v.validate("short")
    await asyncio.sleep(max(0.0, idp.tokens["short"]["exp"] - time.time()) + 0.05)
    assert peek(v, "short") is None
    with pytest.raises(InvalidTokenError):
        await v.validate("short")


@pytest.mark.parametrize("mode", ["fail", "invalid_json"], ids=["http-500", "not-json"])
async def test_server_errors_are_unavailable(make_validator, idp, mode):
    """5xx and non-JSON answers make the source unavailable (503), never invalid."""
    idp.introspect_mode = mode
    v = await make_validator([idp.introspection_source()])
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")


async def test_hanging_server_times_out(make_validator, idp):
    """A server that never answers is unavailable after the source's timeout."""
    idp.introspect_mode = "hang"
    v = await make_validator([idp.introspection_source(timeout="300ms")])
    started = time.perf_counter()
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")
    assert 0.25 < time.perf_counter() - started < 1.0


async def test_slow_server_within_timeout_answers(make_validator, idp):
    """A slow answer inside the timeout is used."""
    idp.introspect_mode, idp.delay = "slow", 0.2
    idp.tokens["tok"] = idp.claims()
    v = await make_validator([idp.introspection_source(timeout="2s")])
    assert (await v.validate("tok")).subject == "alice"


async def test_server_down_is_unavailable(make_validator, idp):
    """Connection refused is unavailable (503)."""
    v = await make_validator([idp.introspection_source()])
    await idp.stop()
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")


async def test_rejected_credentials_are_unavailable_and_logged_once(make_validator, idp):
    """A 401 to our own client credentials is a 503 for users and one error log line."""
    v = await make_validator([idp.introspection_source(client_secret="wrong")])
    with capture_logs() as logs:
        for i in range(5):
            with pytest.raises(ValidatorUnavailableError):
                await v.validate(f"tok-{i}")
    rejected = [e for e in logs if e["event"] == "introspection_client_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["log_level"] == "error"
    assert idp.auth_failures == 5


async def test_stale_if_error_during_an_idp_outage(make_validator, idp):
    """With the IdP down, a positive answer is reused past ttl within stale_if_error."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator(
        [idp.introspection_source()], cache={"ttl": "200ms", "stale_if_error": "10m"}
    )
    first = await v.validate("tok")
    await idp.stop()
    await asyncio.sleep(0.25)
    assert peek(v, "tok") is None  # no longer fresh
    with capture_logs() as logs:
        assert await v.validate("tok") == first
    assert "stale_answer_served" in [e["event"] for e in logs]
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("never-seen")


async def test_stale_if_error_is_bounded(make_validator, idp):
    """Past ttl + stale_if_error the outage becomes a 503."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator(
        [idp.introspection_source()], cache={"ttl": "150ms", "stale_if_error": "150ms"}
    )
    await v.validate("tok")
    idp.introspect_mode = "fail"
    await asyncio.sleep(0.2)
    await v.validate("tok")  # stale but usable
    await asyncio.sleep(0.15)
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")


async def test_stale_if_error_never_past_exp(make_validator, idp):
    """A stale answer is never used past the token's exp (it is then simply expired)."""
    idp.tokens["tok"] = idp.claims(exp=int(time.time()) + 1)
    v = await make_validator(
        [idp.introspection_source()], cache={"ttl": "100ms", "stale_if_error": "10m"}
    )
    await v.validate("tok")
    idp.introspect_mode = "fail"
    await asyncio.sleep(max(0.0, idp.tokens["tok"]["exp"] - time.time()) + 0.05)
    with pytest.raises(InvalidTokenError):
        await v.validate("tok")
    assert idp.introspect_calls == 1


async def test_shared_cache_between_replicas(make_validator, idp, redis_url):
    """A second replica reuses the first one's answer from Redis without asking the IdP."""
    idp.tokens["tok"] = idp.claims()
    a = await make_validator([idp.introspection_source()], redis_url)
    b = await make_validator([idp.introspection_source()], redis_url)
    assert (await a.validate("tok")).subject == "alice"
    assert (await b.validate("tok")).subject == "alice"
    with pytest.raises(InvalidTokenError):
        await a.validate("bad")
    with pytest.raises(InvalidTokenError):
        await b.validate("bad")
    assert idp.introspect_calls == 2


async def test_shared_stale_answer_during_outage(make_validator, idp, redis_url):
    """A replica that never saw a token can serve it stale from Redis while the IdP is down."""
    idp.tokens["tok"] = idp.claims()
    cache = {"ttl": "200ms", "stale_if_error": "10m"}
    a = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    b = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    await a.validate("tok")
    await asyncio.sleep(0.25)
    await idp.stop()
    assert (await b.validate("tok")).subject == "alice"
