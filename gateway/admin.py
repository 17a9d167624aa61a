"""The admin listener (aiohttp): /healthz, /readyz, /metrics. Never on the main listener."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.metrics import Metrics


def build_admin_app(metrics: Metrics, ready: Callable[[], bool]) -> web.Application:
    """Liveness always answers while the loop runs; readiness is false while draining."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready"}, status=503)

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
