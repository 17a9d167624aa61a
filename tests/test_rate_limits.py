"""Rate limits (SPEC section 14): exact headers, the 429, per-app overrides, several policies,
`ip` keys and X-Forwarded-For trust, forward-auth, config validation. Against real gateways and
a real upstream; the Redis-shared buckets are in tests/test_rate_limits_redis.py."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.ratelimit.limiter import lease_size
from tests.fixtures.servers import base_config

POLICIES = {
    "per_client": {"key": ["client_id"], "rate": "3/m"},  # burst 3, one token per 20 s
    "per_route": {"key": ["route"], "rate": "4/m", "burst": 4},
    "per_ip": {"key": ["ip"], "rate": "2/m"},
    "per_sub": {"key": ["sub"], "rate": "3/m"},
}


def _config(upstream: str, rate_limit: Any, **extra: Any) -> dict[str, Any]:
    routes = [
        {"name": "status", "path": "/status", "upstream": "api", "auth": "public",
         "rate_limit": "per_ip"},
        {"name": "api", "path_prefix": "/v1", "upstream": "api", "rate_limit": rate_limit},
        {"name": "free", "path_prefix": "/free", "upstream": "api"},
    ]  # fmt: skip
    return base_config(upstream, routes=routes, rate_limits=POLICIES, **extra)


async def _get(
    s: aiohttp.ClientSession, url: str, token: str | None = None, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with s.get(url, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_headers_429_and_the_upstream_never_sees_a_refused_request(
    make_gateway, echo_upstream
):
    """3/m: three answers with `RateLimit` counting down, then 429 `rate_limited` with
    Retry-After 20 (one token per 20 s) and both structured fields, exactly as SPEC 14 writes
    them; the refused request never reaches the upstream."""
    gw = await make_gateway(_config(echo_upstream.url, "per_client"))
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    async with aiohttp.ClientSession() as s:
        seen = []
        for _ in range(3):
            status, headers, _ = await _get(s, gw.url + "/v1/x", token)
            assert status == 200
            assert "RateLimit-Policy" not in headers
            seen.append(headers["RateLimit"])
        assert seen == [
            '"per_client";r=2;t=20',
            '"per_client";r=1;t=40',
            '"per_client";r=0;t=60',
        ]
        status, headers, body = await _get(s, gw.url + "/v1/x", token)
    assert status == 429
    assert headers["Retry-After"] == "20"
    assert headers["RateLimit-Policy"] == '"per_client";q=3;w=60'
    assert headers["RateLimit"] == '"per_client";r=0;t=60'
    assert headers["Content-Type"] == "application/json"
    assert "WWW-Authenticate" not in headers
    import json

    assert json.loads(body) == {
        "error": "rate_limited",
        "error_description": "Too many requests; retry after the time given in Retry-After.",
    }
    assert echo_upstream.requests == 3
    metrics = (await _admin(gw, "/metrics")).decode()
    assert 'gateway_rate_limited_total{policy="per_client",route="api"} 1.0' in metrics
    assert 'gateway_denials_total{reason="rate_limited",route="api"} 1.0' in metrics


async def test_a_route_without_limits_answers_without_ratelimit_headers(
    make_gateway, echo_upstream
):
    gw = await make_gateway(_config(echo_upstream.url, "per_client"))
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            status, headers, _ = await _get(s, gw.url + "/free/x", token)
            assert status == 200
            assert "RateLimit" not in headers


async def _admin(gw: Any, path: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + path) as r:
        return await r.read()


async def test_each_client_id_has_its_own_bucket_and_an_app_its_override(
    make_gateway, echo_upstream
):
    """`apps[].rate_limits` gives web-app 5/m burst 5 on per_client; another client keeps 3."""
    apps = [{"client_id": "web-app", "secrets": ["s3cret"],
             "rate_limits": {"per_client": {"rate": "5/m"}}}]  # fmt: skip
    gw = await make_gateway(_config(echo_upstream.url, "per_client", apps=apps))
    validator = gw.gateway.runtime.validator
    web = await validator.issue("code", "web-app", "alice", "read")
    web2 = await validator.issue("code", "web-app", "bob", "read")  # same client_id
    other = await validator.issue("code", "other-app", "alice", "read")
    async with aiohttp.ClientSession() as s:
        statuses = [(await _get(s, gw.url + "/v1/x", t))[0] for t in (web, web2) * 3]
        assert statuses == [200, 200, 200, 200, 200, 429]
        _, headers, _ = await _get(s, gw.url + "/v1/x", web)
        assert headers["RateLimit-Policy"] == '"per_client";q=5;w=60'
        assert headers["Retry-After"] == "12"
        statuses = [(await _get(s, gw.url + "/v1/x", other))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]


async def test_several_policies_on_a_route_must_all_allow(make_gateway, echo_upstream):
    """per_client (3/m) and per_route (4/m): one member per policy, in the route's order; the
    request refused by one policy does not spend a token of the other."""
    gw = await make_gateway(_config(echo_upstream.url, ["per_client", "per_route"]))
    validator = gw.gateway.runtime.validator
    a = await validator.issue("code", "app-a", "alice", "read")
    b = await validator.issue("code", "app-b", "bob", "read")
    async with aiohttp.ClientSession() as s:
        for expected in ('"per_client";r=2;t=20, "per_route";r=3;t=15',
                         '"per_client";r=1;t=40, "per_route";r=2;t=30',
                         '"per_client";r=0;t=60, "per_route";r=1;t=45'):  # fmt: skip
            status, headers, _ = await _get(s, gw.url + "/v1/x", a)
            assert (status, headers["RateLimit"]) == (200, expected)
        status, headers, _ = await _get(s, gw.url + "/v1/x", a)  # per_client is empty
        assert status == 429
        assert headers["RateLimit-Policy"] == '"per_client";q=3;w=60, "per_route";q=4;w=60'
        assert headers["RateLimit"] == '"per_client";r=0;t=60, "per_route";r=1;t=45'
        status, headers, _ = await _get(s, gw.url + "/v1/x", b)  # the route's last token
        assert (status, headers["RateLimit"]) == (
            200,
            '"per_client";r=2;t=20, "per_route";r=0;t=60',
        )
        status, headers, _ = await _get(s, gw.url + "/v1/x", b)
        assert status == 429
        assert headers["Retry-After"] == "15"
        assert headers["RateLimit"] == '"per_client";r=2;t=20, "per_route";r=0;t=60'
    assert echo_upstream.requests == 4


async def test_ip_limit_on_a_public_route(make_gateway, echo_upstream):
    gw = await make_gateway(_config(echo_upstream.url, "per_client"))
    async with aiohttp.ClientSession() as s:
        statuses = [(await _get(s, gw.url + "/status"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert echo_upstream.requests == 2


async def test_trusted_proxy_forwarded_for_names_the_client(make_gateway, echo_upstream):
    """From a trusted proxy the client is the last X-Forwarded-For address that is not a
    trusted proxy itself: what a client wrote before it cannot choose the key."""
    gw = await make_gateway(
        _config(echo_upstream.url, "per_client", trusted_proxies=["127.0.0.1", "10.9.0.0/16"])
    )
    async with aiohttp.ClientSession() as s:

        async def status(xff: str) -> int:
            return (await _get(s, gw.url + "/status", **{"X-Forwarded-For": xff}))[0]

        assert [await status("203.0.113.7") for _ in range(3)] == [200, 200, 429]
        assert await status("203.0.113.8") == 200  # another client, another bucket
        # a spoofed first hop before the real client is ignored: still 203.0.113.7
        assert await status("198.51.100.1, 203.0.113.7") == 429
        # a chain of trusted proxies is walked back to the client
        assert await status("203.0.113.7, 10.9.1.1") == 429
        assert await status("203.0.113.8, 10.9.1.1, 10.9.2.2") == 200
        assert await status("203.0.113.8") == 429


async def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_key(
    make_gateway, echo_upstream
):
    """The attacker's view: an untrusted peer rotating X-Forwarded-For keeps one bucket."""
    gw = await make_gateway(
        _config(echo_upstream.url, "per_client", trusted_proxies=["10.0.0.0/8"])
    )
    async with aiohttp.ClientSession() as s:
        statuses = [
            (await _get(s, gw.url + "/status", **{"X-Forwarded-For": f"203.0.113.{i}"}))[0]
            for i in range(4)
        ]
    assert statuses == [200, 200, 429, 429]


async def test_identity_keys_come_from_the_validated_token(make_gateway, echo_upstream):
    """The attacker's view: forged X-Auth-* headers (any spelling) change neither the
    client_id nor the sub bucket: they come from the token."""
    gw = await make_gateway(_config(echo_upstream.url, ["per_client", "per_sub"]))
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    forged = [
        {"X-Auth-Client-Id": "victim-1", "X-Auth-Subject": "bob"},
        {"X_Auth_Client_Id": "victim-2", "X-Auth-Subject": "carol"},
        {"X-Auth-Client-Id": "victim-3", "X_Auth_Subject": "dave"},
        {"X-Auth-Client-Id": "victim-4"},
    ]
    async with aiohttp.ClientSession() as s:
        statuses = [(await _get(s, gw.url + "/v1/x", token, **h))[0] for h in forged]
    assert statuses == [200, 200, 200, 429]


async def test_forward_auth_applies_the_route_limits(make_gateway, echo_upstream):
    """A decision is judged exactly as proxy mode: it spends a token, answers 200 with
    RateLimit, and 429 once over."""
    cfg = _config(echo_upstream.url, "per_client", forward_auth={"host": "127.0.0.1", "port": 0})
    gw = await make_gateway(cfg)
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    url = f"http://127.0.0.1:{gw.gateway.ports['forward_auth']}/auth"
    described = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/orders"}
    async with aiohttp.ClientSession() as s:
        answers = [await _get(s, url, token, **described) for _ in range(4)]
        proxied = await _get(s, gw.url + "/v1/orders", token)
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    assert answers[0][1]["RateLimit"] == '"per_client";r=2;t=20'
    assert answers[0][1]["X-Auth-Client-Id"] == "web-app"
    assert answers[3][1]["Retry-After"] == "20"
    assert proxied[0] == 429  # the same buckets as proxy mode
    assert echo_upstream.requests == 0


async def test_buckets_survive_a_reload(make_gateway, echo_upstream, tmp_path):
    import yaml

    cfg = _config(echo_upstream.url, "per_client")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    token = await gw.gateway.runtime.validator.issue("code", "web-app", "alice", "read")
    async with aiohttp.ClientSession() as s:
        assert [(await _get(s, gw.url + "/v1/x", token))[0] for _ in range(2)] == [200, 200]
        assert await gw.gateway.reload()
        assert [(await _get(s, gw.url + "/v1/x", token))[0] for _ in range(2)] == [200, 429]


# -- config --------------------------------------------------------------------------------


def _problems(cfg: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    return err.value.problems


def test_config_errors_name_their_key_path():
    cfg = base_config(
        "http://127.0.0.1:9",
        rate_limits={
            "ok": {"key": ["client_id"], "rate": "10/s"},
            "bad_rate": {"key": ["ip"], "rate": "10/d"},
            "zero": {"key": ["ip"], "rate": "0/s"},
            "bad_key": {"key": ["email"], "rate": "1/s"},
            "no_key": {"key": [], "rate": "1/s"},
            "small": {"key": ["ip"], "rate": "1/s", "burst": 0},
        },
        routes=[
            {"name": "a", "path": "/a", "upstream": "api", "rate_limit": "nope"},
            {"name": "b", "path": "/b", "upstream": "api", "rate_limit": ["ok", "ok"]},
            {"name": "c", "path": "/c", "upstream": "api", "auth": "public", "rate_limit": "ok"},
        ],
        apps=[{"client_id": "x", "secrets": ["s"], "rate_limits": {"gone": {"rate": "1/s"}}}],
    )
    problems = _problems(cfg)
    text = "\n".join(problems)
    assert "rate_limits.bad_rate.rate: invalid rate '10/d'" in text
    assert "rate_limits.zero.rate: invalid rate '0/s': N must be at least 1" in text
    assert any(p.startswith("rate_limits.bad_key.key[0]") for p in problems)
    assert any(p.startswith("rate_limits.no_key.key") for p in problems)
    assert any(p.startswith("rate_limits.small.burst") for p in problems)
    assert "routes[0].rate_limit: no rate_limits policy named 'nope'" in text
    assert "routes[1].rate_limit: a policy is listed twice" in text
    assert "routes[2]: rate_limit 'ok' is keyed by ['client_id']" in text
    assert "apps[0].rate_limits: no rate_limits policy named 'gone'" in text


def test_policy_defaults_and_compiled_route_limits():
    cfg = parse_config(
        base_config(
            "http://127.0.0.1:9",
            rate_limits={
                "p": {"key": ["sub", "route"], "rate": "120/m"},
                "q": {"key": ["ip"], "rate": "5/h", "burst": 2},
            },
            routes=[
                {"name": "a", "path": "/a", "upstream": "api", "rate_limit": ["p", "q"]},
                {"name": "b", "path": "/b", "upstream": "api"},
            ],
        )
    )
    from gateway.routing import RouteTable

    table = RouteTable.from_config(cfg)
    a, b = table.routes
    assert b.limits is None
    assert a.limits is not None
    p, q = a.limits.policies
    assert (p.name, p.keys, p.interval, p.burst) == ("p", ("sub", "route"), 0.5, 120)
    assert (q.name, q.interval, q.burst) == ("q", 720.0, 2)
    assert a.limits.uses_ip


@pytest.mark.parametrize(
    ("interval", "burst", "lease"),
    [(0.01, 200, 10), (1e-6, 10**7, 1000), (6.0, 10, 1), (0.01, 8, 1), (0.001, 1, 1)],
)
def test_lease_size(interval, burst, lease):
    """~0.1 s of the rate, at most an eighth of the burst, between 1 and 1000."""
    assert lease_size(interval, burst) == lease
