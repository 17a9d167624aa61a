"""`workers: 2`: one admin listener (the parent's) whose /metrics is the sum of every worker's,
so a scrape sees the whole gateway and each request once."""

from __future__ import annotations

import re

import aiohttp

from gateway.workers import aggregate
from tests.fixtures.process import GatewayProcess


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_scrape_counts_every_request_of_every_worker_once(echo_upstream, tmp_path):
    routes = [
        {"name": "all", "path_prefix": "/", "upstream": "api", "auth": "public",
         "rate_limit": "per_ip"},
    ]  # fmt: skip
    limits = {"per_ip": {"key": ["ip"], "rate": "5/m"}}
    gp = GatewayProcess(tmp_path, echo_upstream.url, routes=routes, workers=2, rate_limits=limits)
    await gp.start()
    try:
        prefixes, refused = set(), 0
        async with aiohttp.ClientSession() as s:
            for _ in range(30):  # a new connection each: SO_REUSEPORT spreads them
                async with s.get(gp.url + "/w", headers={"Connection": "close"}) as r:
                    await r.read()
                    prefixes.add(r.headers["X-Request-Id"][:12])
                    refused += r.status == 429
            scrapes = []
            for _ in range(3):
                async with s.get(f"http://127.0.0.1:{gp.admin}/metrics") as r:
                    assert r.status == 200
                    scrapes.append(await r.text())
            async with s.get(f"http://127.0.0.1:{gp.admin}/readyz") as r:
                assert r.status == 200
                assert (await r.json())["workers"] == 2
    finally:
        assert gp.stop() == 0
    assert len(prefixes) == 2  # both workers answered (each mints its own request ids)
    for text in scrapes:
        ok = _value(text, 'gateway_requests_total{method="GET",route="all",status="200"}')
        limited = _value(text, 'gateway_requests_total{method="GET",route="all",status="429"}')
        assert (ok, limited) == (30 - refused, refused)
        count = _value(text, 'gateway_request_duration_seconds_count{route="all"}')
        assert count == 30
        assert _value(text, 'gateway_rate_limited_total{policy="per_ip",route="all"}') == refused
        assert len(re.findall(r"^# TYPE gateway_requests_total counter$", text, re.M)) == 1
    assert echo_upstream.requests == 30 - refused


def test_aggregate_adds_samples_and_keeps_the_earliest_created():
    one = (
        "# HELP gateway_denials_total Requests refused.\n# TYPE gateway_denials_total counter\n"
        'gateway_denials_total{reason="x",route="a"} 2.0\n'
        'gateway_denials_created{reason="x",route="a"} 100.0\n'
        "# HELP gateway_in_flight Requests being handled.\n# TYPE gateway_in_flight gauge\n"
        "gateway_in_flight 3.0\n"
    )
    two = one.replace(" 2.0", " 5.0").replace(" 100.0", " 90.0").replace(" 3.0", " 1.0")
    two = two.replace(
        'gateway_denials_total{reason="x",route="a"} 5.0\n',
        'gateway_denials_total{reason="x",route="a"} 5.0\n'
        'gateway_denials_total{reason="y",route="a"} 1.0\n',
    )
    text = aggregate([one, two]).decode()
    assert 'gateway_denials_total{reason="x",route="a"} 7.0' in text
    assert 'gateway_denials_total{reason="y",route="a"} 1.0' in text
    assert 'gateway_denials_created{reason="x",route="a"} 90.0' in text
    assert "gateway_in_flight 4.0" in text
