"""A live config file truncated to nothing (an editor, a bad ConfigMap) is refused at reload:
the gateway process keeps serving its routes with the config it had."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import orjson

REFUSED = 'gateway_config_reloads_total{outcome="refused"}'
APPLIED = 'gateway_config_reloads_total{outcome="applied"}'


async def _metric(s: aiohttp.ClientSession, admin: int, name: str) -> float:
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def _wait_metric(s: aiohttp.ClientSession, admin: int, name: str, value: float) -> None:
    deadline = time.monotonic() + 10
    while await _metric(s, admin, name) < value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        await asyncio.sleep(0.1)


async def _status(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url) as r:
        await r.read()
        return r.status


def _refusals(log: str) -> list[dict]:
    events = []
    for line in log.splitlines():
        if line.startswith("{") and '"config_reload_refused"' in line:
            events.append(orjson.loads(line))
    return events


async def test_truncated_config_is_refused_and_routes_keep_answering(
    echo_upstream, gateway_process
):
    """A comments-only file (seen by the file watcher) and an empty one (SIGHUP) are both
    refused with `routes: at least one route is required`; every route answers as before, and
    a valid file is applied afterwards."""
    gp = await gateway_process(
        echo_upstream.url,
        routes=[
            {"name": "status", "path": "/status", "upstream": "api", "auth": "public"},
            {"name": "api", "path_prefix": "/v1", "upstream": "api"},
        ],
    )
    assert gp.proc is not None
    async with aiohttp.ClientSession() as s:
        before = (await _status(s, gp.url + "/status"), await _status(s, gp.url + "/v1/x"))
        assert before == (200, 401)

        gp.path.write_text("# truncated: nothing but comments\n")  # no signal: the watcher
        await _wait_metric(s, gp.admin, REFUSED, 1)
        assert (await _status(s, gp.url + "/status"), await _status(s, gp.url + "/v1/x")) == before

        gp.path.write_text("")
        gp.proc.send_signal(signal.SIGHUP)
        await _wait_metric(s, gp.admin, REFUSED, 2)
        assert (await _status(s, gp.url + "/status"), await _status(s, gp.url + "/v1/x")) == before
        assert await _status(s, gp.url + "/elsewhere") == 404  # the old table, not a new one
        assert await _metric(s, gp.admin, APPLIED) == 0

        gp.write()  # the original config again: reloads still work
        gp.proc.send_signal(signal.SIGHUP)
        await _wait_metric(s, gp.admin, APPLIED, 1)
        assert await _status(s, gp.url + "/status") == 200
    assert gp.proc.poll() is None
    refusals = _refusals(gp.log.read_text())
    assert len(refusals) >= 2  # the watcher may see the second write before the SIGHUP does
    for event in refusals:
        assert event["level"] == "error"
        assert event["problems"] == ["routes: at least one route is required"]
