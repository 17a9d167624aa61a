"""`gateway demo`: an echo upstream and the gateway on embedded defaults, no Redis, no IdP.

Mints one authorization-code token and one implicit token, prints curl commands that show every
answer of SPEC section 4, and (with --self-test) runs them and checks each status.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import sys
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from gateway.config import parse_config
from gateway.proof import compute_proof
from gateway.serve import Gateway, install_uvloop

APP_ID = "demo-app"
APP_SECRET = "demo-app-secret"  # noqa: S105 - the demo's own made-up secret, printed on purpose
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(port: int, upstream: str, dead: str) -> dict[str, object]:
    """The embedded config: in-memory store and cache, one app for appsecret_proof."""
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": 0},
        "log": {"format": "json", "access": False},
        "limits": {"max_body": "1KiB"},
        "apps": [{"client_id": APP_ID, "secrets": [APP_SECRET]}],
        "upstreams": {"echo": {"url": upstream}, "down": {"url": dead, "connect_timeout": "1s"}},
        "routes": [
            {"name": "status", "path": "/status", "upstream": "echo", "auth": "public"},
            {
                "name": "payments",
                "path_prefix": "/v1/payments",
                "upstream": "echo",
                "grants": ["authorization_code"],
                "scopes": ["payments"],
            },
            {
                "name": "server-only",
                "path_prefix": "/v1/server",
                "upstream": "echo",
                "appsecret_proof": "required",
            },
            {"name": "admin", "path_prefix": "/v1/admin", "upstream": "echo", "scopes": ["admin"]},
            {"name": "broken", "path_prefix": "/v1/broken", "upstream": "down"},
            {"name": "api", "path_prefix": "/v1", "upstream": "echo", "query_token": True},
        ],
    }


@dataclass
class Step:
    title: str
    method: str
    path: str
    headers: dict[str, str]
    expect: int
    body: bytes | None = None
    shows: str = ""  # the answer's body must contain it (what the upstream echoed)

    def curl(self, base: str) -> str:
        parts = ["curl", "-i"]
        if self.method != "GET":
            parts += ["-X", self.method]
        for name, value in self.headers.items():
            parts += ["-H", f"{name}: {value}"]
        prefix = ""
        if self.body is not None:
            prefix = f"head -c {len(self.body)} /dev/zero | tr '\\0' x | "
            parts += ["--data-binary", "@-"]
        parts.append(base + self.path)
        return prefix + " ".join(shlex.quote(p) for p in parts)


def demo_steps(code: str, implicit: str) -> list[Step]:
    """Every row of SPEC section 4, as requests against the demo routes."""
    bearer = {"Authorization": f"Bearer {code}"}
    imp = {"Authorization": f"Bearer {implicit}"}
    proof = compute_proof(code, APP_SECRET)
    return [
        Step("public route, no token", "GET", "/status", {}, 200),
        Step(
            "W3C trace context passed upstream",
            "GET",
            "/status",
            {"traceparent": TRACE},
            200,
            shows=TRACE,
        ),
        Step("code token on a code-only route", "GET", "/v1/payments/42", bearer, 200),
        Step("no token", "GET", "/v1/payments/42", {}, 401),
        Step("unknown token", "GET", "/v1/items", {"Authorization": "Bearer nope"}, 401),
        Step("implicit token on a code-only route", "GET", "/v1/payments/42", imp, 403),
        Step("implicit token on an ordinary route", "GET", "/v1/items", imp, 200),
        Step("token in the query string", "GET", f"/v1/items?access_token={implicit}", {}, 200),
        Step("token sent two ways", "GET", f"/v1/items?access_token={code}", bearer, 400),
        Step("malformed Authorization", "GET", "/v1/items", {"Authorization": "Bearer a b"}, 400),
        Step("scope missing", "GET", "/v1/admin", bearer, 403),
        Step("proof required, missing", "GET", "/v1/server", bearer, 400),
        Step(
            "proof wrong",
            "GET",
            "/v1/server",
            {**bearer, "X-Appsecret-Proof": "00" * 32},
            403,
        ),
        Step("proof right", "GET", f"/v1/server?appsecret_proof={proof}", bearer, 200),
        Step("no route", "GET", "/nowhere", {}, 404),
        Step("body over the limit", "POST", "/v1/items", bearer, 413, b"x" * 2000),
        Step("upstream down", "GET", "/v1/broken", bearer, 502),
        Step("session details", "GET", "/oauth20/access-token", imp, 200),
        Step("revoke the session", "DELETE", "/oauth20/access-token", imp, 200),
        Step("revoked token", "GET", "/v1/items", imp, 401),
    ]


def _echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {
                    k: v
                    for k, v in request.headers.items()
                    if k.lower().startswith("x-") or k.lower() in ("traceparent", "tracestate")
                },
                "body_bytes": len(body),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _run(port: int, self_test: bool) -> int:
    runner = web.AppRunner(_echo_app(), access_log=None)
    await runner.setup()
    up_port = _free_port(0)
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    dead = f"http://127.0.0.1:{_free_port(0)}"
    port = _free_port(port)
    gw = Gateway(parse_config(demo_config(port, f"http://127.0.0.1:{up_port}", dead)))
    await gw.start()
    assert gw.runtime is not None
    validator = gw.runtime.validator
    code = await validator.issue("authorization_code", APP_ID, "alice", "payments profile")
    implicit = await validator.issue("implicit", APP_ID, "alice", "profile")
    base = f"http://127.0.0.1:{port}"
    steps = demo_steps(code, implicit)
    print(
        f"Echo upstream on 127.0.0.1:{up_port}; gateway on {base}; admin on "
        f"http://127.0.0.1:{gw.ports['admin']}/metrics\n"
    )
    print(f"authorization_code token (365 d): {code}")
    print(f"implicit token (6 h):             {implicit}")
    print(f"app {APP_ID!r} secret:            {APP_SECRET}\n")
    for i, step in enumerate(steps, 1):
        print(f"# {i}. {step.title} -> expect {step.expect}")
        print(step.curl(base) + "\n")
    failures = 0
    try:
        if self_test:
            failures = await _check(base, steps)
        else:
            print("Paste the commands above in another terminal. Ctrl-C stops the demo.")
            await asyncio.Event().wait()
    finally:
        await gw.close()
        await runner.cleanup()
    return 1 if failures else 0


async def _check(base: str, steps: list[Step]) -> int:
    failures = 0
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
        for step in steps:
            async with session.request(
                step.method, base + step.path, headers=step.headers, data=step.body
            ) as resp:
                raw = await resp.read()
            ok = resp.status == step.expect and step.shows.encode() in raw
            failures += not ok
            detail = ""
            if resp.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    detail = str(orjson.loads(raw).get("error", ""))
            print(f"{'ok ' if ok else 'BAD'} {resp.status} {step.title} {detail}".rstrip())
    print(f"demo: {len(steps) - failures} of {len(steps)} answers as expected")
    return failures


def run_demo(port: int = 8080, self_test: bool = False) -> int:
    install_uvloop()
    try:
        return asyncio.run(_run(port, self_test))
    except KeyboardInterrupt:
        print("demo stopped", file=sys.stderr)
        return 0
