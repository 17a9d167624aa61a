"""The in-process LRU (peek) and the shared Redis layer: bounds, keys, freshness."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.authn.cache import (
    LocalCache,
    TokenDigest,
    negative_entry,
    positive_entry,
)
from gateway.authn.info import TokenInfo
from gateway.config.models import CacheConfig
from gateway.errors import InvalidTokenError
from tests.fixtures.idp import peek

STORE = [{"type": "store"}]


def info(exp: float | None) -> TokenInfo:
    return TokenInfo("u", "c", "s", frozenset({"s"}), "implicit", exp, "store")


def test_positive_entry_bounds():
    """Fresh for ttl, usable for ttl + stale_if_error, both never past exp."""
    cfg = CacheConfig(ttl=10, stale_if_error=100)
    e = positive_entry(info(None), 1000.0)
    assert (e.fresh_until(cfg), e.usable_until(cfg)) == (1010.0, 1110.0)
    e = positive_entry(info(1050.0), 1000.0)
    assert (e.fresh_until(cfg), e.usable_until(cfg)) == (1010.0, 1050.0)
    e = positive_entry(info(1005.0), 1000.0)
    assert (e.fresh_until(cfg), e.usable_until(cfg)) == (1005.0, 1005.0)
    n = negative_entry(1000.0)
    ncfg = CacheConfig(negative_ttl=3)
    assert (n.info, n.fresh_until(ncfg), n.usable_until(ncfg)) == (None, 1003.0, 1003.0)


def test_lru_evicts_least_recently_used():
    """Beyond max_entries the least recently used hash goes; a peek counts as a use."""
    cache = LocalCache(CacheConfig(max_entries=3))
    now = time.time()
    h = {name: TokenDigest.of(name).hex for name in "abcd"}
    for name in "abc":
        cache.put(h[name], positive_entry(info(None), now))
    assert cache.peek(h["a"]) is not None  # a is now the most recent
    cache.put(h["d"], positive_entry(info(None), now))
    assert list(cache.entries) == [TokenDigest(h[name]).key for name in "cad"]
    assert cache.peek(h["b"]) is None


def test_revoked_hash_is_never_cached_positively():
    """A positive answer for a revoked hash is not stored; revocations expire with the token."""
    cache = LocalCache(CacheConfig())
    now = time.time()
    h = TokenDigest.of("h").hex
    cache.revoke(h, now + 0.05)
    cache.put(h, positive_entry(info(None), now))
    assert cache.peek(h) is None
    assert cache.is_revoked(h, now)
    cache.purge(now + 1)
    assert not cache.is_revoked(h, now + 1)


async def test_peek_states(make_validator):
    """peek: unseen None; cached positive its info; cached negative raises; no I/O either way."""
    v = await make_validator(STORE)
    token = await v.issue("implicit", "spa")
    assert peek(v, token) is None
    info_ = await v.validate(token)
    assert peek(v, token) is info_
    with pytest.raises(InvalidTokenError):
        await v.validate("unknown")
    with pytest.raises(InvalidTokenError):
        peek(v, "unknown")


async def test_validator_lru_max_entries(make_validator):
    """The validator's in-process layer holds at most max_entries answers."""
    v = await make_validator(STORE, cache={"max_entries": 2})
    tokens = [await v.issue("implicit", "spa") for _ in range(3)]
    for t in tokens:
        await v.validate(t)
    assert len(v.local.entries) == 2
    assert peek(v, tokens[0]) is None
    assert peek(v, tokens[2]) is not None


async def test_store_answer_never_cached_past_exp(make_validator):
    """A store token expiring before ttl leaves the cache at its exp."""
    v = await make_validator(STORE, cache={"ttl": "5m"})
    token = await v.issue("implicit", "spa", ttl_seconds=1)
    exp = (await v.validate(token)).expires_at
    await asyncio.sleep(exp - time.time() + 0.05)
    assert peek(v, token) is None
    with pytest.raises(InvalidTokenError):
        await v.validate(token)


async def test_shared_keys_are_hashes_with_bounded_ttls(make_validator, idp, redis_url):
    """Redis holds sha256 keys only; positive TTL <= ttl + stale_if_error, negatives negative_ttl."""
    idp.tokens["secret-token-value"] = idp.claims()
    cache = {"ttl": "60s", "stale_if_error": "60s", "negative_ttl": "5s"}
    v = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    await v.validate("secret-token-value")
    with pytest.raises(InvalidTokenError):
        await v.validate("other-secret-value")
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        keys = set(r.keys("*"))
        values = [r.get(k) for k in keys]
        pos = r.pttl(f"gw:cache:{TokenDigest.of('secret-token-value').hex}")
        neg = r.pttl(f"gw:cache:{TokenDigest.of('other-secret-value').hex}")
    assert keys == {
        f"gw:cache:{TokenDigest.of(t).hex}" for t in ("secret-token-value", "other-secret-value")
    }
    assert "secret-token-value" not in repr(values) and "other-secret-value" not in repr(values)
    assert 110_000 < pos <= 120_000
    assert 4_000 < neg <= 5_000


async def test_shared_positive_freshness_counts_from_first_answer(make_validator, idp, redis_url):
    """A replica reading a shared answer keeps it fresh only for what is left of ttl."""
    idp.tokens["tok"] = idp.claims()
    cache = {"ttl": "400ms"}
    a = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    b = await make_validator([idp.introspection_source()], redis_url, cache=cache)
    await a.validate("tok")
    await asyncio.sleep(0.25)
    await b.validate("tok")
    assert idp.introspect_calls == 1
    await asyncio.sleep(0.2)  # 450 ms after the IdP answered
    assert peek(b, "tok") is None
    await b.validate("tok")
    assert idp.introspect_calls == 2


async def test_garbage_in_the_shared_cache_is_ignored(make_validator, idp, redis_url):
    """A shared entry that is not ours is ignored and the source is asked."""
    idp.tokens["tok"] = idp.claims()
    with redis.Redis.from_url(redis_url) as r:
        r.set(f"gw:cache:{TokenDigest.of('tok').hex}", b"\xff not json")
    v = await make_validator([idp.introspection_source()], redis_url)
    assert (await v.validate("tok")).source == "introspection"


def test_cached_answers_share_client_ids_and_scopes():
    """Many tokens of one client keep one copy of its id and scope (memory per cached token),
    built from separately decoded claims as an introspection answer would be."""
    import json

    from gateway.authn import info as info_module
    from gateway.authn.grants import info_from_claims

    claims = [
        json.loads(
            json.dumps({"sub": f"user-{i}", "client_id": "client-a", "scope": "read  write"})
        )
        for i in range(3)
    ]
    infos = [info_from_claims(c, "authorization_code", "introspection") for c in claims]
    assert claims[0]["client_id"] is not claims[1]["client_id"]  # two decoded copies...
    assert infos[0].client_id is infos[1].client_id is infos[2].client_id  # ...one kept
    assert infos[0].scope is infos[2].scope
    assert infos[0].scope == "read write" and infos[0].scopes == {"read", "write"}
    assert [i.subject for i in infos] == ["user-0", "user-1", "user-2"]
    # The table is bounded: past its size a value is kept as it is, not added.
    full = dict.fromkeys(f"x{i}" for i in range(info_module._SCOPE_SETS_MAX))
    saved = info_module._SHARED_STRS.copy()
    try:
        info_module._SHARED_STRS.clear()
        info_module._SHARED_STRS.update({k: k for k in full})
        fresh = "".join(["client-", "b"])
        assert info_module.shared_str(fresh) is fresh
        assert fresh not in info_module._SHARED_STRS
    finally:
        info_module._SHARED_STRS.clear()
        info_module._SHARED_STRS.update(saved)


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=",
        min_size=1,
        max_size=200,
    )
)
def test_token_key_is_the_key_of_the_tokens_digest(token):
    """The request path peeks by TokenDigest.key; everything else (puts, revocations, Redis
    answers) names a token by its hex digest. They must agree, or the fast path would silently
    miss every cached answer."""
    digest = TokenDigest.of(token)
    assert digest.hex == hashlib.sha256(token.encode()).hexdigest()
    assert TokenDigest(digest.hex).key == digest.key == int(digest.hex[:32], 16)
    assert digest.id == digest.hex[:12]
    cache = LocalCache(CacheConfig())
    info = TokenInfo("alice", "app", "read", frozenset({"read"}), "authorization_code", None)
    cache.put(digest.hex, positive_entry(info, time.time()))
    assert cache.peek_raw(digest.key, time.time()) is info


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "peek", "drop", "revoke"]), st.integers(0, 5)),
        max_size=60,
    )
)
def test_lru_order_matches_a_reference_lru(ops):
    """Whatever the sequence of puts, hits, drops and revocations, the cache holds the same
    keys in the same least-recently-used order as a plain OrderedDict LRU (the shortcut that
    skips re-inserting the most recent entry changes no order)."""
    cache = LocalCache(CacheConfig(max_entries=3))
    model: OrderedDict[str, None] = OrderedDict()
    now = time.time()
    for op, n in ops:
        digest = TokenDigest.of(f"token-{n}").hex
        if op == "put":
            cache.put(digest, positive_entry(info(None), now))
            if not cache.is_revoked(digest, now):
                model.pop(digest, None)
                model[digest] = None
                while len(model) > 3:
                    model.popitem(last=False)
        elif op == "peek":
            found = cache.peek(digest) is not None
            assert found == (digest in model)
            if found:
                model.move_to_end(digest)
        elif op == "drop":
            cache.drop(digest)
            model.pop(digest, None)
        else:
            cache.revoke(digest, now + 60)
            model.pop(digest, None)
        assert list(cache.entries) == [TokenDigest(d).key for d in model]
