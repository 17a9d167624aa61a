"""The reference: a bare aiohttp reverse proxy (no auth), the way one would write it quickly.

aiohttp server (no access log) + one aiohttp ClientSession with a keep-alive pool, uvloop,
`skip_auto_headers` so the client adds nothing the caller did not send, hop-by-hop headers
dropped both ways. What the gateway must beat by a wide margin.

    python bench/bare_proxy.py --port 9200 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from procs import serve_helper

HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
SKIP = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def build_app(upstream: str) -> web.Application:
    state: dict[str, aiohttp.ClientSession] = {}

    async def start(_: web.Application) -> None:
        state["s"] = aiohttp.ClientSession(
            base_url=upstream,
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            skip_auto_headers=SKIP,
            auto_decompress=False,
        )

    async def stop(_: web.Application) -> None:
        await state["s"].close()

    async def proxy(request: web.Request) -> web.Response:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP)
        body = await request.read() if request.body_exists else None
        async with state["s"].request(
            request.method,
            request.rel_url,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            out = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in HOP)
            return web.Response(status=resp.status, headers=out, body=payload)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    serve_helper(
        lambda args: build_app(args.upstream),
        __doc__.splitlines()[0],
        upstream={"required": True},
    )


if __name__ == "__main__":
    main()
