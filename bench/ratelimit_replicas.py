"""Two gateway processes sharing one rate limit through one redis-server: how many requests do
they admit together, against what one bucket allows over the run (`burst + rate x seconds`)?

Starts redis-server, an upstream (`bench/upstream.py`) and two gateways on 127.0.0.1, mints a
token into the shared store, then hammers both gateways at once with the same token (keep-alive
clients, bounded in time) for each policy, and prints admitted / allowed (the overshoot: what
the replicas admitted beyond one bucket, negative when they admitted less), the 429s, and how
many lease calls Redis answered (its `commandstats`).

    .venv/bin/python bench/ratelimit_replicas.py [--duration 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml
from procs import HOST, Stack, free_port, wait_port

HERE = Path(__file__).resolve().parent
PY = sys.executable
POLICIES = {"p100": ("100/s", 100), "p300": ("300/s", 300), "p10": ("10/s", 20)}


def gateway_config(port: int, upstream: int, redis_port: int) -> dict[str, Any]:
    return {
        "listen": {"host": HOST, "port": port},
        "admin": None,
        "log": {"format": "json", "access": False},
        "redis": {"url": f"redis://{HOST}:{redis_port}/0"},
        "upstreams": {"up": {"url": f"http://{HOST}:{upstream}"}},
        "rate_limits": {
            name: {"key": ["client_id"], "rate": rate, "burst": burst}
            for name, (rate, burst) in POLICIES.items()
        },
        "routes": [
            {"name": name, "path": f"/{name}", "upstream": "up", "rate_limit": name}
            for name in POLICIES
        ],
    }


async def hammer(urls: list[str], token: str, seconds: float, clients: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token}"}
    until = time.monotonic() + seconds

    async def one(url: str) -> None:
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < until:
                async with s.get(url, headers=headers) as r:
                    await r.read()
                    counts[r.status] = counts.get(r.status, 0) + 1

    await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(clients)))
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8, help="keep-alive clients, both gateways")
    args = p.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    tmp = Path(tempfile.mkdtemp(prefix="ratelimit-replicas-"))
    stack = Stack(tmp)
    try:
        redis_port, up = free_port(), free_port()
        argv = [binary, "--port", str(redis_port), "--bind", HOST, "--save", ""]
        wait_port(redis_port, proc=stack.start("redis", argv))
        upstream = [PY, str(HERE / "upstream.py"), "--port", str(up)]
        wait_port(up, proc=stack.start("upstream", upstream))
        ports = []
        for i in range(2):
            port = free_port()
            path = tmp / f"gw{i}.yaml"
            path.write_text(yaml.safe_dump(gateway_config(port, up, redis_port)))
            proc = stack.start(f"gw{i}", [PY, "-m", "gateway", "serve", "--config", str(path)])
            wait_port(port, proc=proc)
            ports.append(port)
        client = redis.Redis(host=HOST, port=redis_port)
        print(f"two gateways, one redis-server, {args.clients} clients, {args.duration:.0f} s each")
        print(f"{'policy':18s} {'allowed':>8s} {'admitted':>9s} {'overshoot':>10s} "
              f"{'429':>7s} {'lease calls':>12s}")  # fmt: skip
        for name, (rate, burst) in POLICIES.items():
            issue = [PY, "-m", "gateway", "token", "issue", "--config", str(tmp / "gw0.yaml")]
            token = subprocess.run(
                [*issue, "--grant", "code", "--client-id", f"c-{name}"],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout.strip()  # fmt: skip
            client.config_resetstat()
            urls = [f"http://{HOST}:{port}/{name}" for port in ports]
            start = time.monotonic()
            counts = asyncio.run(hammer(urls, token, args.duration, args.clients))
            elapsed = time.monotonic() - start
            n = int(rate.split("/")[0])
            allowed = burst + n * elapsed
            admitted = counts.get(200, 0)
            stats = client.info("commandstats")
            calls = sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_eval"))
            print(
                f"{rate + ' burst ' + str(burst):18s} {allowed:8.0f} {admitted:9d} "
                f"{admitted - allowed:+10.0f} {counts.get(429, 0):7d} {calls:12d}"
            )
            others = {k: v for k, v in counts.items() if k not in (200, 429)}
            if others:
                print(f"  unexpected answers: {others}")
        client.close()
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
