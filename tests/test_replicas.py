"""Several gateway processes sharing one Redis: tokens, revocation propagation, workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aiohttp

from gateway.http import wire
from tests.fixtures.process import GatewayProcess


def _routes() -> list[dict]:
    return [{"name": "api", "path_prefix": "/", "upstream": "api"}]


def _issue(config_path, grant: str = "implicit") -> str:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "token",
            "issue",
            "--config",
            str(config_path),
            "--grant",
            grant,
            "--client-id",
            "web-app",
            "--subject",
            "alice",
            "--scope",
            "read",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


async def _status(s: aiohttp.ClientSession, url: str, token: str, method: str = "GET") -> int:
    async with s.request(method, url, headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r.status


async def test_revocation_reaches_every_replica_within_a_second(
    echo_upstream, gateway_process, redis_url
):
    """DELETE on one gateway process makes another refuse the token within one second."""
    a = await gateway_process(echo_upstream.url, routes=_routes(), redis={"url": redis_url})
    b = await gateway_process(echo_upstream.url, routes=_routes(), redis={"url": redis_url})
    token = _issue(a.path)
    async with aiohttp.ClientSession() as s:
        assert await _status(s, a.url + "/x", token) == 200
        assert await _status(s, b.url + "/x", token) == 200  # now cached in b's process
        assert await _status(s, a.url + "/oauth20/access-token", token, "DELETE") == 200
        revoked_at = time.monotonic()
        while await _status(s, b.url + "/x", token) == 200:
            assert time.monotonic() - revoked_at < 1.0, "replica still accepts the revoked token"
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - revoked_at
    print(f"revocation propagation to the other replica: {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0


async def test_cli_revoke_reaches_running_gateway(echo_upstream, gateway_process, redis_url):
    """`gateway token revoke` has the same effect as DELETE on the session endpoint."""
    gp = await gateway_process(echo_upstream.url, routes=_routes(), redis={"url": redis_url})
    token = _issue(gp.path, "authorization_code")
    async with aiohttp.ClientSession() as s:
        assert await _status(s, gp.url + "/x", token) == 200
        res = subprocess.run(
            # `--`: a token may begin with `-` (docs/commands.md)
            [
                sys.executable,
                "-m",
                "gateway",
                "token",
                "revoke",
                "--config",
                str(gp.path),
                "--",
                token,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 1.0
        while await _status(s, gp.url + "/x", token) == 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)


async def test_workers_share_the_port_and_drain(echo_upstream, tmp_path):
    """`workers: 2` runs two processes on one port (SO_REUSEPORT); SIGTERM stops them all with 0."""
    gp = GatewayProcess(tmp_path, echo_upstream.url, workers=2)
    await gp.start()
    try:
        async with aiohttp.ClientSession() as s:
            ids = []
            for _ in range(20):
                async with s.get(gp.url + "/w", headers={"Connection": "close"}) as r:
                    assert r.status == 200
                    ids.append(r.headers["X-Request-Id"])
        assert gp.proc is not None
        children = subprocess.run(["pgrep", "-P", str(gp.proc.pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) == 2
    finally:
        assert gp.stop() == 0
    assert echo_upstream.requests == 20
    assert len(set(ids)) == 20  # each worker mints its own ids (forked after import)


def test_a_forked_process_mints_request_ids_of_its_own():
    """The id prefix is drawn again in a forked child: workers never repeat each other's ids."""
    before = wire.request_id(None)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: mint one id, hand it over, leave at once
        os.write(write_end, wire.request_id(None).encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 200).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    after = wire.request_id(None)
    assert len(child_id) == len(before) == len(after)
    assert child_id[:12] != before[:12]  # another random prefix
    assert after[:12] == before[:12] and after != before  # the parent's own sequence goes on
