"""Rate limits shared through a real redis-server: two gateway processes on one bucket, Redis
killed and restarted mid-run (local limiting, never open, never closed, recovery), leases taken
in batches (no Redis round trip per request) and given back when a key goes idle."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import redis
from multidict import CIMultiDict

from tests.fixtures.process import GatewayProcess
from tests.fixtures.servers import base_config
from tests.test_replicas import _issue

LIMITS = {"per_client": {"key": ["client_id"], "rate": "10/h"}}  # burst 10, no refill to speak of
ROUTES = [
    {"name": "api", "path_prefix": "/v1", "upstream": "api", "rate_limit": "per_client"},
    {"name": "free", "path_prefix": "/free", "upstream": "api"},
]


async def _status(s: aiohttp.ClientSession, url: str, token: str) -> tuple[int, CIMultiDict[str]]:
    async with s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r.status, CIMultiDict(r.headers)


async def _pair(gateway_process: Any, upstream: str, url: str) -> tuple[Any, Any]:
    a = await gateway_process(upstream, routes=ROUTES, redis={"url": url}, rate_limits=LIMITS)
    b = await gateway_process(upstream, routes=ROUTES, redis={"url": url}, rate_limits=LIMITS)
    return a, b


async def _metric(gp: GatewayProcess, line_start: str) -> float:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gp.admin}/metrics") as r,
    ):
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_two_processes_share_one_bucket(echo_upstream, gateway_process, redis_url):
    """10/h across two replicas: 10 answers in all, whichever replica is asked, then 429 from
    both with the shared bucket's state."""
    a, b = await _pair(gateway_process, echo_upstream.url, redis_url)
    token = _issue(a.path, "authorization_code")
    async with aiohttp.ClientSession() as s:
        answers = [await _status(s, gp.url + "/v1/x", token) for _ in range(15) for gp in (a, b)]
    statuses = [st for st, _ in answers]
    assert statuses.count(200) == 10
    assert set(statuses[12:]) == {429}
    assert echo_upstream.requests == 10
    last = answers[-1][1]
    assert last["RateLimit-Policy"] == '"per_client";q=10;w=3600'
    assert last["RateLimit"] == '"per_client";r=0;t=3600'
    assert 359 <= int(last["Retry-After"]) <= 360
    assert answers[0][1]["RateLimit"] == '"per_client";r=9;t=360'


async def test_redis_killed_and_restarted_mid_run(
    echo_upstream, gateway_process, redis_server, redis_url
):
    """Redis down: each process limits on its own counts (10 each: never open, never closed),
    logged once and counted; Redis back (empty): the shared bucket limits both together again."""
    a, b = await _pair(gateway_process, echo_upstream.url, redis_url)
    spent = _issue(a.path, "authorization_code")
    token = _issue_for(a.path, "other-app")
    async with aiohttp.ClientSession() as s:
        for gp in (a, b):  # the token is cached in both processes (a route without limits)
            assert (await _status(s, gp.url + "/free/x", token))[0] == 200
        # a key known empty in Redis stays refused without asking Redis; spend one bucket
        shared = [(await _status(s, gp.url + "/v1/x", spent))[0] for _ in range(8) for gp in (a, b)]
        assert shared.count(200) == 10

        redis_server.stop()
        try:
            local = {
                gp.port: [(await _status(s, gp.url + "/v1/x", token))[0] for _ in range(13)]
                for gp in (a, b)
            }
        finally:
            redis_server.start()
        for statuses in local.values():
            # its own full bucket of 10, then refusals: limiting goes on, on local counts
            assert statuses == [200] * 10 + [429] * 3
        for gp in (a, b):
            assert await _metric(gp, 'gateway_rate_limit_local_total{policy="per_client"}') >= 13
            events = [json.loads(x) for x in gp.log.read_text().splitlines() if x.startswith("{")]
            assert sum(e.get("event") == "rate_limit_local" for e in events) == 1

        # Redis is back, empty (no persistence): once each process has found it again, the two
        # share one fresh bucket of 10 (a process still on its spent local bucket refuses)
        after: list[int] = []
        deadline = time.monotonic() + 15
        while after.count(200) < 10 and time.monotonic() < deadline:
            after += [(await _status(s, gp.url + "/v1/x", token))[0] for gp in (a, b)]
            await asyncio.sleep(0.05)
        assert after.count(200) == 10, after
        tail = [(await _status(s, gp.url + "/v1/x", token))[0] for _ in range(3) for gp in (a, b)]
        assert tail == [429] * 6
    assert echo_upstream.requests == 2 + 10 + 20 + 10


def _issue_for(config_path: Any, client_id: str) -> str:
    import subprocess
    import sys

    args = ["token", "issue", "--config", str(config_path), "--grant", "authorization_code"]
    res = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--client-id", client_id, "--subject", "u"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return res.stdout.strip()


async def test_two_processes_under_load_stay_within_the_limit(
    echo_upstream, gateway_process, redis_url
):
    """50/s burst 50, four clients hammering two replicas for 3 s: what they admit together is
    at most what one bucket allows over the run (leases never overshoot), and most of it."""
    limits = {"per_client": {"key": ["client_id"], "rate": "50/s"}}
    kw = {"routes": ROUTES, "redis": {"url": redis_url}, "rate_limits": limits}
    a = await gateway_process(echo_upstream.url, **kw)
    b = await gateway_process(echo_upstream.url, **kw)
    token = _issue(a.path, "authorization_code")
    headers = {"Authorization": f"Bearer {token}"}
    counts = {200: 0, 429: 0}

    async def hammer(url: str, until: float) -> None:
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < until:
                async with s.get(url + "/v1/x", headers=headers) as r:
                    await r.read()
                    counts[r.status] = counts.get(r.status, 0) + 1

    start = time.monotonic()
    end = start + 3.0
    await asyncio.gather(*(hammer(gp.url, end) for gp in (a, b, a, b)))
    elapsed = time.monotonic() - start
    allowed = 50 + 50 * elapsed
    print(f"admitted {counts[200]} of {allowed:.0f} allowed; {counts[429]} refused")
    assert counts[429] > 0
    assert counts[200] <= allowed
    assert counts[200] >= 0.8 * (50 + 50 * 3.0)
    assert set(counts) == {200, 429}


async def test_leases_spare_redis_and_go_back_when_idle(make_gateway, echo_upstream, redis_url):
    """1000/s: tokens are taken from Redis 100 at a time (not one round trip per request), and
    what a key leaves unspent goes back to the shared bucket once it is idle."""
    limits = {"fast": {"key": ["client_id"], "rate": "1000/s"}}
    routes = [{"name": "api", "path_prefix": "/v1", "upstream": "api", "rate_limit": "fast"}]
    cfg = base_config(
        echo_upstream.url, routes=routes, rate_limits=limits, redis={"url": redis_url}
    )
    gw = await make_gateway(cfg)
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    async with aiohttp.ClientSession() as s:
        for _ in range(250):
            assert (await _status(s, gw.url + "/v1/x", token))[0] == 200
    stats = client.info("commandstats")
    calls = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    assert 2 <= calls <= 8, stats
    keys = client.keys("gw:rl:fast:*")
    assert len(keys) == 1
    deadline = time.monotonic() + 5
    while client.exists(keys[0]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not client.exists(keys[0])  # the unspent lease went back: the bucket is full again
    client.close()


async def test_a_bucket_redis_cannot_judge_is_limited_locally(
    make_gateway, echo_upstream, redis_url
):
    """A Redis that answers but refuses the script for a key (here: another type stored at the
    bucket's key) neither opens the limit nor refuses everything: this process's counts."""
    import hashlib

    limits = {"small": {"key": ["client_id"], "rate": "3/h"}}
    routes = [{"name": "api", "path_prefix": "/v1", "upstream": "api", "rate_limit": "small"}]
    cfg = base_config(
        echo_upstream.url, routes=routes, rate_limits=limits, redis={"url": redis_url}
    )
    gw = await make_gateway(cfg)
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    client = redis.Redis.from_url(redis_url)
    digest = hashlib.sha256(b"small\x00web-app").hexdigest()[:32]
    client.hset(f"gw:rl:small:{digest}", "not", "a bucket")
    async with aiohttp.ClientSession() as s:
        statuses = [(await _status(s, gw.url + "/v1/x", token))[0] for _ in range(5)]
    client.close()
    assert statuses == [200, 200, 200, 429, 429]
