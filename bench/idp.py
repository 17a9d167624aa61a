"""A tiny RFC 7662 introspection server for the bench: one known token, every other inactive.

POST /introspect (form `token=...`) answers `{"active": true, "client_id": "bench", "sub": "u",
"scope": "bench", "grant_type": "authorization_code", "exp": now+3600}` for the bench token and
`{"active": false}` otherwise; the answer names the bench resource (`aud`). With `--bound
TOKEN=JKT` (repeatable) it also knows DPoP-bound tokens (`cnf.jkt`). GET /count says how many
introspections it answered (the gateway caches the answer, so this stays at one per gateway
process).

    python bench/idp.py --port 9100 --token TOKEN [--bound TOKEN=JKT ...]
"""

from __future__ import annotations

import time

from aiohttp import web
from procs import serve_helper

RESOURCE = "https://bench.example/api"


def build_app(token: str, bound: dict[str, str] | None = None) -> web.Application:
    calls = {"introspect": 0}
    bound = bound or {}

    async def introspect(request: web.Request) -> web.Response:
        calls["introspect"] += 1
        form = await request.post()
        sent = form.get("token")
        if sent != token and sent not in bound:
            return web.json_response({"active": False})
        answer = {
            "active": True,
            "client_id": "bench",
            "sub": "u",
            "scope": "bench",
            "grant_type": "authorization_code",
            "exp": int(time.time()) + 3600,
            "aud": RESOURCE,
        }
        if sent in bound:
            answer["cnf"] = {"jkt": bound[str(sent)]}
        return web.json_response(answer)

    async def count(_: web.Request) -> web.Response:
        return web.json_response(calls)

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    serve_helper(
        lambda args: build_app(args.token, dict(b.split("=", 1) for b in args.bound or [])),
        __doc__.splitlines()[0],
        token={"required": True},
        bound={"action": "append"},
    )


if __name__ == "__main__":
    main()
