"""TokenValidator: source order, outages (503 never 401), coalescing, grants, logging."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from gateway.errors import InvalidTokenError, ValidatorUnavailableError
from tests.fixtures.idp import peek

STORE = {"type": "store"}


async def test_first_source_that_knows_answers(make_validator, idp):
    """Sources are asked in configured order; the first that knows the token answers."""
    first = await make_validator([STORE, idp.introspection_source()])
    token = await first.issue("implicit", "spa", "from-store")
    idp.tokens[token] = idp.claims(sub="from-idp")
    assert (await first.validate(token)).subject == "from-store"
    assert idp.introspect_calls == 0

    second = await make_validator([idp.introspection_source(), STORE])
    second.store = first.store  # same in-memory records
    second.sources[1].store = first.store
    assert (await second.validate(token)).subject == "from-idp"


async def test_store_jwt_introspection_chain(make_validator, idp):
    """Opaque unknown-to-store tokens skip jwt and reach introspection; JWS ones stop at jwt."""
    idp.tokens["opaque"] = idp.claims(sub="opaque-user")
    v = await make_validator([STORE, idp.jwt_source(), idp.introspection_source()])
    assert (await v.validate("opaque")).subject == "opaque-user"
    assert (await v.validate(idp.sign(idp.claims(sub="jwt-user")))).source == "jwt"
    with pytest.raises(InvalidTokenError):
        await v.validate(idp.sign(idp.claims(aud="not-us")))
    assert idp.introspect_calls == 1


async def test_source_down_and_nobody_knows_is_503(make_validator, idp):
    """An unreachable source with no later source vouching is a 503, not a 401."""
    v = await make_validator([idp.introspection_source(), STORE])
    await idp.stop()
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("unknown-anywhere")


async def test_source_down_but_later_source_knows(make_validator, idp):
    """An unreachable source is skipped when a later source knows the token."""
    v = await make_validator([idp.introspection_source(), STORE])
    token = await v.issue("authorization_code", "web-app", "alice")
    await idp.stop()
    assert (await v.validate(token)).source == "store"


async def test_negative_after_an_outage_is_not_final_nor_cached(make_validator, idp):
    """A later source's "inactive" after an unreachable one is a 503, and not cached."""
    v = await make_validator([idp.jwt_source(), idp.introspection_source()])
    idp.jwks_mode = "fail"
    token = idp.sign(idp.claims())
    with pytest.raises(ValidatorUnavailableError):
        await v.validate(token)
    assert peek(v, token) is None


async def test_outage_logged_once_per_source(make_validator, idp):
    """A source outage is logged once when it starts and once when it ends."""
    idp.tokens["tok"] = idp.claims()
    v = await make_validator([idp.introspection_source()])
    with capture_logs() as logs:
        idp.introspect_mode = "fail"
        for i in range(3):  # fewer than the circuit breaker's threshold (tests/test_breaker.py)
            with pytest.raises(ValidatorUnavailableError):
                await v.validate(f"t{i}")
        idp.introspect_mode = "ok"
        await v.validate("tok")
    events = [e["event"] for e in logs]
    assert events.count("token_source_unavailable") == 1
    assert events.count("token_source_recovered") == 1


async def test_500_concurrent_first_requests_make_one_introspection_call(make_validator, idp):
    """Request coalescing: 500 concurrent validations of one unseen token share one lookup."""
    idp.tokens["hot"] = idp.claims()
    idp.introspect_mode, idp.delay = "slow", 0.1
    v = await make_validator([idp.introspection_source()])
    results = await asyncio.gather(*(v.validate("hot") for _ in range(500)))
    print(
        f"\ncoalescing: 500 concurrent validate() -> {idp.introspect_calls} introspection call(s)"
    )
    assert idp.introspect_calls == 1
    assert all(r is results[0] for r in results)


async def test_coalesced_failures_are_shared_too(make_validator, idp):
    """Concurrent validations of an unseen token during an outage make one call and all 503."""
    idp.introspect_mode = "fail"
    v = await make_validator([idp.introspection_source()])
    results = await asyncio.gather(*(v.validate("x") for _ in range(100)), return_exceptions=True)
    assert all(isinstance(r, ValidatorUnavailableError) for r in results)
    assert idp.introspect_calls == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(make_validator, idp):
    """One caller giving up (client gone) leaves the lookup running for the others."""
    idp.tokens["tok"] = idp.claims()
    idp.introspect_mode, idp.delay = "slow", 0.2
    v = await make_validator([idp.introspection_source()])
    quitter = asyncio.create_task(v.validate("tok"))
    stayer = asyncio.create_task(v.validate("tok"))
    await asyncio.sleep(0.05)
    quitter.cancel()
    assert (await stayer).subject == "alice"
    assert idp.introspect_calls == 1


@pytest.mark.parametrize(
    ("value", "grant"),
    [
        ("authorization_code", "authorization_code"),
        ("code", "authorization_code"),
        ("implicit", "implicit"),
        ("token", "implicit"),
        ("client_credentials", "client_credentials"),
        ("password", "password"),
        ("refresh_token", "refresh_token"),
        ("urn:ietf:params:oauth:grant-type:device_code", "unknown"),
        (None, "unknown"),
    ],
    ids=[
        "authorization_code",
        "code",
        "implicit",
        "token",
        "client_credentials",
        "password",
        "refresh_token",
        "unmapped",
        "absent",
    ],
)
async def test_grant_mapping_from_every_source(make_validator, idp, value, grant):
    """The grant claim maps through tokens.grant.values the same way for every source."""
    v = await make_validator([idp.jwt_source(), idp.introspection_source()])
    idp.tokens["opaque"] = idp.claims(grant_type=value)
    assert (await v.validate("opaque")).grant == grant
    assert (await v.validate(idp.sign(idp.claims(grant_type=value)))).grant == grant


async def test_custom_grant_claim_and_values(make_validator, idp):
    """tokens.grant.claim and .values are configurable; unlisted values are `unknown`."""
    grant = {"claim": "gty", "values": {"web": "authorization_code", "spa": "implicit"}}
    v = await make_validator([STORE, idp.introspection_source()], grant=grant)
    idp.tokens["a"] = idp.claims(gty="spa")
    idp.tokens["b"] = idp.claims(gty="authorization_code")
    assert (await v.validate("a")).grant == "implicit"
    assert (await v.validate("b")).grant == "unknown"
    stored = await v.issue("authorization_code", "web-app")  # canonical names stay readable
    assert (await v.validate(stored)).grant == "authorization_code"


async def test_tokens_never_appear_in_logs(make_validator, idp, redis_url, redis_server):
    """Whatever happens (valid, invalid, outage, stale, revoke), logs never carry a token."""
    idp.tokens["tok-secret-1"] = idp.claims()
    v = await make_validator(
        [STORE, idp.introspection_source(revocation_url=f"{idp.url}/revoke")],
        redis_url,
        cache={"ttl": "100ms"},
    )
    stored = await v.issue("implicit", "spa")
    with capture_logs() as logs:
        await v.validate("tok-secret-1")
        await v.validate(stored)
        with pytest.raises(InvalidTokenError):
            await v.validate("tok-secret-2")
        idp.introspect_mode = "fail"
        await asyncio.sleep(0.15)
        with pytest.raises(ValidatorUnavailableError):
            await v.validate("tok-secret-3")
        await v.validate("tok-secret-1")  # stale
        idp.introspect_mode = "ok"
        await v.revoke("tok-secret-1")
        redis_server.stop()
        with pytest.raises(ValidatorUnavailableError):
            await v.validate("tok-secret-4")
        redis_server.start()
        deadline = time.monotonic() + 2
        while idp.revoke_calls == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    text = repr(logs)
    assert len(logs) >= 5
    for secret in ("tok-secret-1", "tok-secret-2", "tok-secret-3", "tok-secret-4", stored):
        assert secret not in text
    assert any(e.get("token_id") for e in logs)


async def test_validate_before_start_fails_loudly(make_validator, idp):
    """Using HTTP sources before start() is a programming error, not a 401."""
    v = await make_validator([idp.introspection_source()], start=False)
    with pytest.raises(RuntimeError, match="start"):
        await v.validate("tok")
