"""A tiny RFC 7662 introspection server for the bench: one known token, every other inactive.

POST /introspect (form `token=...`) answers `{"active": true, "client_id": "bench", "sub": "u",
"scope": "bench", "grant_type": "authorization_code", "exp": now+3600}` for the bench token and
`{"active": false}` otherwise. GET /count says how many introspections it answered (the gateway
caches the answer, so this stays at one per gateway process).

    python bench/idp.py --port 9100 --token TOKEN
"""

from __future__ import annotations

import argparse
import time

import uvloop
from aiohttp import web


def build_app(token: str) -> web.Application:
    calls = {"introspect": 0}

    async def introspect(request: web.Request) -> web.Response:
        calls["introspect"] += 1
        form = await request.post()
        if form.get("token") != token:
            return web.json_response({"active": False})
        return web.json_response(
            {
                "active": True,
                "client_id": "bench",
                "sub": "u",
                "scope": "bench",
                "grant_type": "authorization_code",
                "exp": int(time.time()) + 3600,
            }
        )

    async def count(_: web.Request) -> web.Response:
        return web.json_response(calls)

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    args = p.parse_args()
    web.run_app(
        build_app(args.token),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
