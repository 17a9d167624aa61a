"""The gateway as a real process: streaming memory, SIGTERM drain, SIGHUP / file-change reload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.fixtures.process import GatewayProcess
from tests.fixtures.servers import free_port

MB = 1024 * 1024


async def test_200mb_upload_and_download_stream_with_bounded_memory(echo_upstream, gateway_process):
    """200 MB each way pass through while the gateway's peak RSS grows by less than 50 MB."""
    gp = await gateway_process(echo_upstream.url)
    async with aiohttp.ClientSession() as s:
        async with s.get(gp.url + "/warm") as r:
            await r.read()
        base = gp.rss_mb()
        size = 200 * MB
        block = os.urandom(MB)
        digest = hashlib.sha256()

        async def upload():
            for _ in range(size // MB):
                digest.update(block)
                yield block

        async with s.post(gp.url + "/upload", data=upload()) as r:
            body = await r.json()
        assert body["body_size"] == size
        assert body["body_sha256"] == digest.hexdigest()
        received = 0
        async with s.get(gp.url + f"/big/{size}") as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(MB):
                received += len(chunk)
                await asyncio.sleep(0)  # a client that reads at its own pace
        assert received == size
    growth = gp.peak_rss_mb() - base
    print(f"gateway RSS before {base:.1f} MB, peak growth {growth:.1f} MB for 2x200 MB")
    assert growth < 50


async def test_sigterm_drains_in_flight_requests(echo_upstream, gateway_process):
    """SIGTERM stops accepting, lets an in-flight request finish, and exits 0."""
    gp = await gateway_process(echo_upstream.url)
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.get(gp.url + "/slow/1"))
        await asyncio.sleep(0.3)
        assert gp.proc is not None
        gp.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.get(gp.url + "/new", headers={"Connection": "close"}) as r:
                await r.read()
        resp = await slow
        assert resp.status == 200
        assert (await resp.json())["path"] == "/slow/1"
        resp.release()
    assert gp.proc.wait(timeout=10) == 0


async def test_sighup_reload_without_dropping_requests(echo_upstream, gateway_process):
    """SIGHUP swaps the route table while a steady stream of requests sees no error."""
    gp = await gateway_process(echo_upstream.url)
    errors: list[int] = []
    stop = asyncio.Event()

    async def traffic(s: aiohttp.ClientSession) -> int:
        n = 0
        while not stop.is_set():
            async with s.get(gp.url + "/keep") as r:
                await r.read()
                if r.status != 200:
                    errors.append(r.status)
            n += 1
        return n

    async with aiohttp.ClientSession() as s:
        workers = [asyncio.create_task(traffic(s)) for _ in range(8)]
        await asyncio.sleep(0.3)
        cfg = dict(gp.config)
        cfg["routes"] = [
            {"name": "new", "path": "/new-only", "upstream": "api", "auth": "public"},
            {"name": "all", "path_prefix": "/", "upstream": "api", "auth": "public"},
        ]
        gp.write(cfg)
        assert gp.proc is not None
        gp.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        stop.set()
        done = sum(await asyncio.gather(*workers))
        async with s.get(gp.url + "/new-only") as r:
            assert r.status == 200
        async with s.get(f"http://127.0.0.1:{gp.admin}/metrics") as r:
            metrics = await r.text()
    assert errors == []
    assert done > 50
    assert 'gateway_config_reloads_total{outcome="applied"} 1.0' in metrics
    assert 'route="new"' in metrics


async def test_invalid_config_is_refused_and_old_keeps_serving(echo_upstream, gateway_process):
    """A broken config on reload is logged and refused; the old routes keep answering."""
    gp = await gateway_process(echo_upstream.url)
    gp.path.write_text("routes: [{name: x, upstream: nowhere}]\n")
    assert gp.proc is not None
    gp.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as s:
        async with s.get(gp.url + "/still") as r:
            assert r.status == 200
        async with s.get(f"http://127.0.0.1:{gp.admin}/metrics") as r:
            assert 'gateway_config_reloads_total{outcome="refused"} 1.0' in await r.text()
    assert "config_reload_refused" in gp.log.read_text()
    assert "routes[0].upstream: no upstream named 'nowhere'" in gp.log.read_text()


async def test_config_file_change_through_symlink_reloads(echo_upstream, tmp_path):
    """A ConfigMap-style symlink swap is picked up without a signal."""
    data = tmp_path / "data-1"
    data.mkdir()
    gp = GatewayProcess(data, echo_upstream.url)
    link = tmp_path / "gateway.yaml"
    link.symlink_to(gp.path)
    gp.path = link
    await gp.start()
    try:
        cfg = dict(gp.config)
        cfg["routes"] = [{"name": "only", "path": "/only", "upstream": "api", "auth": "public"}]
        new_dir = tmp_path / "data-2"
        new_dir.mkdir()
        (new_dir / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        tmp_link = tmp_path / "tmp-link"
        tmp_link.symlink_to(new_dir / "gateway.yaml")
        tmp_link.replace(link)
        deadline = time.monotonic() + 8
        status = 0
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                async with s.get(gp.url + "/other") as r:
                    status = r.status
                if status == 404:
                    break
                await asyncio.sleep(0.2)
        assert status == 404
    finally:
        gp.stop()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_check_config_ok_and_errors(tmp_path):
    """check-config exits 0 with a summary, or 2 with every error and no traceback."""
    good = tmp_path / "good.yaml"
    good.write_text(
        "upstreams: {api: {url: 'http://127.0.0.1:1'}}\nroutes: [{name: a, path: /a, upstream: api}]\n"
    )
    ok = _cli("check-config", str(good))
    assert ok.returncode == 0
    assert "routes      1" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upstreams: {api: {url: 'http://127.0.0.1:1'}}\n"
        "routes: [{name: a, path: /a, upstream: api2}, {name: b, path: /b, upstream: api, x: 1}]\n"
    )
    res = _cli("check-config", str(bad))
    assert res.returncode == 2
    assert "routes[0].upstream: no upstream named 'api2'" in res.stderr
    assert "routes[1].x: Extra inputs are not permitted" in res.stderr
    assert "Traceback" not in res.stderr
    assert _cli("check-config", str(tmp_path / "missing.yaml")).returncode == 2
    assert _cli("serve").returncode == 2  # no --config, no GATEWAY_CONFIG
    assert _cli("no-such-command").returncode == 2


def test_cli_routes_lists_match_order():
    """`gateway routes` prints the table in match order with each route's policy."""
    res = _cli("routes", str(Path(__file__).parent.parent / "config" / "demo.yaml"))
    assert res.returncode == 0
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    names = ["status", "payments", "server-only", "admin", "broken", "api"]
    positions = [next(i for i, line in enumerate(lines) if f" {n} " in f" {line} ") for n in names]
    assert positions == sorted(positions)
    assert "authorization_code" in res.stdout


def test_cli_proof_matches_hmac():
    """`gateway proof` prints hex(HMAC-SHA256(secret, token[|time]))."""
    import hashlib as h
    import hmac

    res = _cli("proof", "--token", "tok", "--secret", "sec")
    assert res.stdout.strip() == hmac.new(b"sec", b"tok", h.sha256).hexdigest()
    res = _cli("proof", "--token", "tok", "--secret", "sec", "--time", "1700000000")
    assert res.stdout.strip() == hmac.new(b"sec", b"tok|1700000000", h.sha256).hexdigest()


def test_demo_self_test_shows_every_answer():
    """`gateway demo --self-test` runs every printed curl command and gets the expected status."""
    res = _cli("demo", "--self-test", "--port", str(free_port()))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BAD" not in res.stdout
    for status in ("200", "400", "401", "403", "404", "413", "502"):
        assert f"ok  {status}" in res.stdout
    assert res.stdout.count("curl -i") >= 19
