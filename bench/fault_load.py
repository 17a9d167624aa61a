"""Load under faults: 20,000 requests at concurrency 100 with valid tokens while Redis is killed
and restarted and the config is reloaded (SIGHUP, then a file change). Prints errors (must be 0),
requests the upstream saw vs successes (must be equal) and introspection calls.

    .venv/bin/python bench/fault_load.py [--requests 20000] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counters:
    upstream = 0
    introspect = 0


def upstream_app(c: Counters) -> web.Application:
    async def handle(_: web.Request) -> web.Response:
        c.upstream += 1
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{t:.*}", handle)
    return app


def idp_app(c: Counters, known: set[str]) -> web.Application:
    async def introspect(request: web.Request) -> web.Response:
        c.introspect += 1
        token = (await request.post()).get("token", "")
        if token not in known:
            return web.json_response({"active": False})
        return web.json_response(
            {
                "active": True,
                "client_id": "load",
                "sub": "u",
                "scope": "read",
                "grant_type": "authorization_code",
                "exp": int(time.time()) + 3600,
            }
        )

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    return app


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def store_tokens(redis_port: int, count: int) -> list[str]:
    """Write tokens straight into the SPEC section 9 store format, as an issuer would."""
    import redis

    r = redis.Redis(port=redis_port)
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    now = int(time.time())
    with r.pipeline() as p:
        for t in tokens:
            record = {
                "client_id": "load",
                "sub": "u",
                "scope": "read",
                "grant_type": "authorization_code",
                "exp": now + 3600,
                "iat": now,
            }
            p.set(
                f"gw:token:{hashlib.sha256(t.encode()).hexdigest()}",
                orjson.dumps(record),
                exat=now + 3600,
            )
        p.execute()
    r.close()
    return tokens


async def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="fault-load-"))
    c = Counters()
    idp_known = {secrets.token_urlsafe(24) for _ in range(50)}
    runners = []
    for app in (upstream_app(c), idp_app(c, idp_known)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
    up_port, idp_port, redis_port, gw_port, admin_port = (free_port() for _ in range(5))
    await web.TCPSite(runners[0], "127.0.0.1", up_port).start()
    await web.TCPSite(runners[1], "127.0.0.1", idp_port).start()
    redis_proc = start_redis(redis_port, tmp)
    config = {
        "listen": {"host": "127.0.0.1", "port": gw_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "log": {"format": "json", "access": False},
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
        "tokens": {
            "sources": [
                {"type": "store"},
                {
                    "type": "introspection",
                    "url": f"http://127.0.0.1:{idp_port}/introspect",
                    "client_id": "gw",
                    "client_secret": "s",
                },
            ]
        },
        "upstreams": {"api": {"url": f"http://127.0.0.1:{up_port}"}},
        "routes": [{"name": "api", "path_prefix": "/", "upstream": "api", "scopes": ["read"]}],
    }
    cfg_path = tmp / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log = (tmp / "gateway.log").open("wb")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    errors: dict[int | str, int] = {}
    ok = 0
    try:
        tokens = store_tokens(redis_port, 200) + sorted(idp_known)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency)
        ) as s:
            for _ in range(100):
                try:
                    async with s.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            warm = await asyncio.gather(*(one(s, gw_port, t) for t in tokens))
            assert set(warm) == {200}, f"warm-up failed: {set(warm)}"
            before_upstream = c.upstream
            total = args.requests
            sent = 0
            events = {
                int(total * 0.2): "kill redis",
                int(total * 0.45): "restart redis",
                int(total * 0.6): "SIGHUP reload",
                int(total * 0.8): "config file change",
            }
            started = time.monotonic()

            async def worker() -> None:
                nonlocal sent, ok, redis_proc
                while sent < total:
                    i = sent
                    sent += 1
                    event = events.pop(i, None)
                    if event == "kill redis":
                        redis_proc.kill()
                        redis_proc.wait()
                    elif event == "restart redis":
                        redis_proc = start_redis(redis_port, tmp)
                    elif event == "SIGHUP reload":
                        config["limits"] = {"max_in_flight": 5000}
                        cfg_path.write_text(yaml.safe_dump(config))
                        gw.send_signal(signal.SIGHUP)
                    elif event == "config file change":
                        config["limits"] = {"max_in_flight": 6000}
                        cfg_path.write_text(yaml.safe_dump(config))
                    if event:
                        print(f"  at request {i}: {event}")
                    status = await one(s, gw_port, tokens[i % len(tokens)])
                    if status == 200:
                        ok += 1
                    else:
                        errors[status] = errors.get(status, 0) + 1

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.monotonic() - started
        seen = c.upstream - before_upstream
        print(
            f"requests            {total} at concurrency {args.concurrency} in {elapsed:.1f} s "
            f"({total / elapsed:.0f} req/s)"
        )
        print(f"errors              {sum(errors.values())} {errors or ''}")
        print(f"successes           {ok}")
        print(f"upstream saw        {seen}")
        print(f"introspection calls {c.introspect} (for {len(idp_known)} IdP tokens)")
        reloads = 0
        for _ in range(50):  # the file watcher polls every 2 s: give it time to notice
            reloads = (tmp / "gateway.log").read_text().count("config_reloaded")
            if reloads >= 2:
                break
            await asyncio.sleep(0.1)
        print(f"reloads applied     {reloads} of 2 (SIGHUP, file change)")
        return 0 if not errors and seen == ok and reloads == 2 else 1
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.kill()
        redis_proc.kill()
        redis_proc.wait()
        for runner in runners:
            await runner.cleanup()
        log.close()
        if os.environ.get("KEEP_LOG"):
            print((tmp / "gateway.log").read_text()[-3000:])
        shutil.rmtree(tmp, ignore_errors=True)


async def one(s: aiohttp.ClientSession, port: int, token: str) -> int | str:
    try:
        async with s.get(
            f"http://127.0.0.1:{port}/item", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError as exc:
        return type(exc).__name__


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=100)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
