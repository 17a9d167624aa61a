"""`workers: N`: N forked processes sharing the listeners (SO_REUSEPORT), and one admin
listener for all of them in the parent.

Each worker serves its own `/metrics`, `/healthz` and `/readyz` on a Unix socket in a directory
made for this run; the parent listens on `admin:` and answers `/metrics` with the sum of every
worker's metrics (one scrape sees the whole gateway, each request counted once), `/readyz` with
ready only when every worker is, and `/healthz` while it runs. A worker that does not answer a
scrape is left out of it (logged); its counters come back with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Sequence

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gateway.config.models import GatewayConfig

log = structlog.get_logger("gateway")
_SCRAPE_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def aggregate(texts: Iterable[str]) -> bytes:
    """Several Prometheus text expositions as one: samples with the same name and labels are
    added up (counters, histogram buckets, sums and counts, the in-flight gauge); `_created`
    timestamps keep the earliest."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            earliest = family.name.endswith("_created")
            summed = values[family.name]
            for s in family.samples:
                key = (s.name, tuple(s.labels.items()))
                if key not in summed:
                    summed[key] = s.value
                elif earliest:
                    summed[key] = min(summed[key], s.value)
                else:
                    summed[key] += s.value
    for name, metric in families.items():
        metric.samples = [
            Sample(sample, dict(labels), value, None, None)
            for (sample, labels), value in values[name].items()
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


class WorkerAdmin:
    """The parent's admin listener, reading the workers' own admin sockets."""

    def __init__(self, sockets: list[str], alive: Callable[[], bool]) -> None:
        self.sockets = sockets
        self.alive = alive

    async def _get(self, sock: str, path: str) -> tuple[int, str] | None:
        timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=sock), timeout=timeout
                ) as s,
                s.get("http://worker" + path) as r,
            ):
                return r.status, await r.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("worker_admin_unreachable", socket=sock, error=type(exc).__name__)
            return None

    async def _all(self, path: str) -> list[tuple[int, str] | None]:
        return list(await asyncio.gather(*(self._get(s, path) for s in self.sockets)))

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            answers = await self._all("/readyz")
            if self.alive() and all(a is not None and a[0] == 200 for a in answers):
                return web.json_response({"status": "ready", "workers": len(answers)})
            return web.json_response({"status": "not_ready"}, status=503)

        async def metrics(_: web.Request) -> web.Response:
            texts = [a[1] for a in await self._all("/metrics") if a is not None and a[0] == 200]
            return web.Response(body=aggregate(texts), headers={"Content-Type": CONTENT_TYPE})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        return app


def run_workers(cfg: GatewayConfig, path: str, workers: int) -> int:
    """Fork the workers, serve the aggregate admin listener, forward signals, wait for all."""
    from gateway.serve import install_uvloop, serve

    run_dir = tempfile.mkdtemp(prefix="gateway-workers-")
    sockets = [os.path.join(run_dir, f"worker-{i}.sock") for i in range(workers)]
    admin = cfg.admin is not None

    def child(index: int) -> None:
        install_uvloop()
        sock = sockets[index] if admin else None
        asyncio.run(serve(cfg, path, reuse_port=True, admin_socket=sock))

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=child, args=(i,), daemon=False) for i in range(workers)]
    for proc in procs:
        proc.start()

    def forward(sig: int) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, sig)

    try:
        asyncio.run(_supervise(cfg, procs, sockets, forward))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


async def _supervise(
    cfg: GatewayConfig,
    procs: Sequence[multiprocessing.process.BaseProcess],
    sockets: list[str],
    forward: Callable[[int], None],
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)
    runner: web.AppRunner | None = None
    if cfg.admin is not None:
        admin = WorkerAdmin(sockets, lambda: all(p.is_alive() for p in procs))
        runner = web.AppRunner(admin.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, cfg.admin.host, cfg.admin.port, reuse_address=True)
        await site.start()
    ended = asyncio.Event()

    def check_ended() -> None:
        if not any(p.is_alive() for p in procs):
            ended.set()

    for proc in procs:  # a process's sentinel becomes readable when it ends
        loop.add_reader(proc.sentinel, check_ended)
    check_ended()
    try:
        await ended.wait()
    finally:
        for proc in procs:
            loop.remove_reader(proc.sentinel)
            proc.join()
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
