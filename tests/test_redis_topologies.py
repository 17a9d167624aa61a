"""Redis Sentinel and Redis Cluster URLs: the store, the shared cache and revocation all work."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import InvalidTokenError


async def _propagation(first, second, token: str) -> float:
    await second.validate(token)  # cached in the second replica's process
    await first.revoke(token)
    started = time.monotonic()
    while True:
        try:
            await second.validate(token)
        except InvalidTokenError:
            return time.monotonic() - started
        assert time.monotonic() - started < 1.0, "revocation did not reach the other replica"
        await asyncio.sleep(0.01)


async def test_sentinel_url_store_and_revocation(make_validator, redis_sentinel, redis_url):
    """A redis+sentinel:// URL finds the master: tokens are issued, read, and revoked everywhere."""
    first = await make_validator([{"type": "store"}], redis_url=redis_sentinel.url)
    second = await make_validator([{"type": "store"}], redis_url=redis_sentinel.url)
    token = await first.issue("authorization_code", "app", "alice", "read")
    info = await second.validate(token)
    assert (info.grant, info.subject) == ("authorization_code", "alice")
    assert await _propagation(first, second, token) < 1.0


async def test_cluster_url_store_and_revocation(make_validator, redis_cluster):
    """With `cluster: true` the store, shared cache and revocations work on a 3-node cluster."""
    first = await make_validator([{"type": "store"}], redis_url=redis_cluster.url, cluster=True)
    second = await make_validator([{"type": "store"}], redis_url=redis_cluster.url, cluster=True)
    tokens = [await first.issue("implicit", "app", f"u{i}", "") for i in range(20)]
    for token in tokens:  # keys hash to all three nodes
        assert (await second.validate(token)).grant == "implicit"
    assert await _propagation(first, second, tokens[0]) < 1.0
    with pytest.raises(InvalidTokenError):
        await first.validate(tokens[0])


async def test_cluster_rate_limit_buckets(make_gateway, echo_upstream, redis_cluster):
    """The lease script touches one key per call: shared buckets work on a cluster, keys on
    every node (one client each, three requests of 3/h allowed, the fourth refused)."""
    import aiohttp

    from tests.fixtures.servers import base_config

    routes = [{"name": "api", "path_prefix": "/v1", "upstream": "api", "rate_limit": "small"}]
    cfg = base_config(
        echo_upstream.url,
        routes=routes,
        rate_limits={"small": {"key": ["client_id"], "rate": "3/h"}},
        redis={"url": redis_cluster.url, "cluster": True},
    )
    gw = await make_gateway(cfg)
    validator = gw.gateway.runtime.validator
    tokens = [await validator.issue("code", f"client-{i}", "u", "") for i in range(6)]
    async with aiohttp.ClientSession() as s:
        for token in tokens:
            statuses = []
            for _ in range(4):
                headers = {"Authorization": f"Bearer {token}"}
                async with s.get(gw.url + "/v1/x", headers=headers) as r:
                    statuses.append(r.status)
            assert statuses == [200, 200, 200, 429]
    assert gw.gateway.runtime.limiter.stats.local == {}  # decided in Redis, never locally
