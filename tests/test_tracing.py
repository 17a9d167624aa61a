"""Tracing (SPEC section 15): W3C trace context passed upstream with or without `tracing:`,
spans exported over OTLP/HTTP to a real collector (tests/fixtures/otlp.py), decoded and checked;
a hanging or dead collector never holds a request, and what it loses is counted."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proof import compute_proof
from gateway.tracecontext import parse_traceparent, valid_tracestate
from tests.fixtures.idp import CLIENT_SECRET
from tests.fixtures.servers import base_config, free_port

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
APP_ID = "web-app"
APP_SECRET = "app-secret-value-0123"


def traceparent(flags: str = "01", trace: str = TRACE, parent: str = PARENT) -> str:
    return f"00-{trace}-{parent}-{flags}"


# ------------------------------------------------------------------ the W3C rules, as a table

VALID_PARENTS = [
    (traceparent("01"), TRACE, 1),
    (traceparent("00"), TRACE, 0),
    (traceparent("09"), TRACE, 9),  # unknown flags: read, the sampled bit decides
    (" \t" + traceparent() + "\t ", TRACE, 1),  # optional whitespace around the value
    ("cc-" + traceparent()[3:], TRACE, 1),  # a future version
    ("cc-" + traceparent()[3:] + "-what-the-future-will-be-like", TRACE, 1),
]
INVALID_PARENTS = [
    "",
    traceparent().upper(),  # hex is lower-case
    "ff-" + traceparent()[3:],  # version ff is forbidden
    traceparent() + ".",
    traceparent() + "-what-the-future-will-be-like",  # version 00 is exactly 55 characters
    "cc-" + traceparent()[3:] + ".what-the-future-will-not-be-like",
    traceparent(trace="0" * 32),
    traceparent(parent="0" * 16),
    ".0" + traceparent()[2:],
    "0." + traceparent()[2:],
    "000" + traceparent()[2:],
    "0" + traceparent()[2:],
    traceparent(trace=TRACE + "3"),
    traceparent(trace=TRACE[:-1]),
    traceparent(trace="." + TRACE[1:]),
    traceparent(parent=PARENT + "7"),
    traceparent(parent=PARENT[:-1]),
    traceparent(parent="." + PARENT[1:]),
    traceparent(".0"),
    traceparent("0."),
    traceparent("001"),
    traceparent("1"),
    f"00_{TRACE}_{PARENT}_01",
]


@pytest.mark.parametrize(("value", "trace_id", "flags"), VALID_PARENTS, ids=repr)
def test_valid_traceparent_is_read(value, trace_id, flags):
    """A valid traceparent gives its trace-id and flags, and is passed on as it came."""
    trace = parse_traceparent(value.encode())
    assert trace is not None
    assert (trace.trace_id, trace.parent_id, trace.flags) == (trace_id, PARENT, flags)
    assert trace.traceparent == value.strip(" \t").encode()


@pytest.mark.parametrize("value", INVALID_PARENTS, ids=repr)
def test_invalid_traceparent_is_refused(value):
    """Anything outside the version 00 format (or a future version's prefix of it) is invalid."""
    assert parse_traceparent(value.encode()) is None


KEY = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
STATES = [
    (["foo=1"], "foo=1"),
    (["foo=1,bar=2"], "foo=1,bar=2"),
    (["foo=1 \t , \t bar=2, \t baz=3"], "foo=1 \t , \t bar=2, \t baz=3"),
    (["foo=1,bar=2", "rojo=1,congo=2", "baz=3"], "foo=1,bar=2,rojo=1,congo=2,baz=3"),
    (["", "foo=1"], "foo=1"),  # an empty field is ignored
    (["foo=1", ""], "foo=1"),
    ([f"{KEY}={VALUE}"], f"{KEY}={VALUE}"),
    ([f"{KEY}@a-z0-9_-*/={VALUE}"], f"{KEY}@a-z0-9_-*/={VALUE}"),
    (["z" * 256 + "=1"], "z" * 256 + "=1"),
    (["t" * 241 + "@" + "v" * 14 + "=1"], "t" * 241 + "@" + "v" * 14 + "=1"),
    ([",".join(f"k{i}=v" for i in range(32))], ",".join(f"k{i}=v" for i in range(32))),
    ([""], None),
    ([" , "], None),
    (["foo=1,foo=2"], None),  # a key twice
    (["foo=1", "foo=1"], None),
    (["FOO=1"], None),
    (["foo.bar=1"], None),
    (["foo =1"], None),
    (["foo@=1,bar=2"], None),
    (["@foo=1,bar=2"], None),
    (["foo@@bar=1,bar=2"], None),
    (["foo@bar@baz=1,bar=2"], None),
    (["z" * 257 + "=1"], None),
    (["t" * 242 + "@v=1"], None),
    (["t@" + "v" * 15 + "=1"], None),
    (["foo=bar=baz"], None),
    (["foo=,bar=3"], None),
    (["foo"], None),
    ([",".join(f"k{i}=v" for i in range(33))], None),  # 33 members
    ([",".join(f"k{i}=v" for i in range(20)), ",".join(f"j{i}=v" for i in range(13))], None),
]


@pytest.mark.parametrize(("fields", "passed"), STATES, ids=lambda x: repr(x)[:60])
def test_tracestate_is_kept_only_when_valid(fields, passed):
    """tracestate: 32 members at most, keys and values per the grammar, no key twice; several
    fields are joined; an invalid one is dropped whole."""
    got = valid_tracestate([f.encode() for f in fields])
    assert got == (passed.encode() if passed is not None else None)


# ------------------------------------------------------------------ helpers


def access_lines(capfd: pytest.CaptureFixture[str], gw: Any) -> list[dict[str, Any]]:
    gw.gateway.runtime.access.flush()
    out = capfd.readouterr().out
    return [orjson.loads(line) for line in out.splitlines() if line.startswith('{"event":"access"')]


def received(body: dict[str, Any], name: str) -> list[str]:
    """The values of one header the echo upstream received."""
    return [v for k, v in body["headers"] if k.lower() == name]


def routes() -> list[dict[str, Any]]:
    return [
        {"name": "public", "path_prefix": "/public", "upstream": "api", "auth": "public"},
        {"name": "api", "path_prefix": "/api", "upstream": "api", "scopes": ["read"]},
        {
            "name": "proof",
            "path_prefix": "/proof",
            "upstream": "api",
            "appsecret_proof": "required",
        },
    ]


def config(upstream: str, tracing: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    cfg = base_config(
        upstream,
        routes=routes(),
        apps=[{"client_id": APP_ID, "secrets": [APP_SECRET]}],
        tokens={"query_param": True, "form_param": True, **extra.pop("tokens", {})},
        **extra,
    )
    if tracing is not None:
        cfg["tracing"] = tracing
    return cfg


def traced(receiver: Any, **overrides: Any) -> dict[str, Any]:
    return {"otlp_endpoint": receiver.endpoint, "sample_ratio": 1.0, **overrides}


async def issue(gw: Any, scope: str = "read") -> str:
    validator = gw.gateway.runtime.validator
    return str(await validator.issue("authorization_code", APP_ID, "alice", scope))


async def fetch(
    url: str, headers: dict[str, str] | list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


# ------------------------------------------------------------------ without `tracing:`


async def test_valid_context_is_passed_upstream_unchanged_without_tracing(
    echo_upstream, make_gateway, capfd
):
    """No `tracing:`: a valid traceparent and tracestate reach the upstream as they came, and
    the access line names the trace."""
    gw = await make_gateway(config(echo_upstream.url))
    sent = "cc-" + traceparent()[3:] + "-future"  # a later version is passed through as is
    status, body = await fetch(
        gw.url + "/public/x", {"traceparent": sent, "tracestate": "rojo=1,congo=2"}
    )
    assert status == 200
    assert received(body, "traceparent") == [sent]
    assert received(body, "tracestate") == ["rojo=1,congo=2"]
    (line,) = access_lines(capfd, gw)
    assert line["trace_id"] == TRACE


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", traceparent(trace="0" * 32)), ("tracestate", "rojo=1")],
        [("traceparent", traceparent().upper()), ("tracestate", "rojo=1")],
        [("traceparent", traceparent()), ("traceparent", traceparent(parent="1" * 16))],
        [("tracestate", "rojo=1")],  # without a traceparent, a tracestate means nothing
    ],
    ids=["zero-trace-id", "upper-case", "twice", "tracestate-alone"],
)
async def test_invalid_context_is_dropped_without_tracing(
    echo_upstream, make_gateway, capfd, headers
):
    """An invalid traceparent, or two of them, is dropped with its tracestate."""
    gw = await make_gateway(config(echo_upstream.url))
    status, body = await fetch(gw.url + "/public/x", headers)
    assert status == 200
    assert received(body, "traceparent") == []
    assert received(body, "tracestate") == []
    (line,) = access_lines(capfd, gw)
    assert "trace_id" not in line


async def test_invalid_tracestate_alone_is_dropped(echo_upstream, make_gateway):
    """A valid traceparent with an invalid tracestate: the traceparent goes on, alone."""
    gw = await make_gateway(config(echo_upstream.url))
    _, body = await fetch(
        gw.url + "/public/x", {"traceparent": traceparent(), "tracestate": "a=1,a=2"}
    )
    assert received(body, "traceparent") == [traceparent()]
    assert received(body, "tracestate") == []


async def test_refused_request_logs_its_trace_id_without_tracing(
    echo_upstream, make_gateway, capfd
):
    """A refused request never reaches the forward stage; its access line still names the
    trace it came with."""
    gw = await make_gateway(config(echo_upstream.url))
    status, _ = await fetch(gw.url + "/api/x", {"traceparent": traceparent()})
    assert status == 401
    (line,) = access_lines(capfd, gw)
    assert line["trace_id"] == TRACE
    assert echo_upstream.requests == 0


async def test_no_context_no_header_without_tracing(echo_upstream, make_gateway, capfd):
    """No `tracing:` and no traceparent: nothing is added (the gateway starts no trace)."""
    gw = await make_gateway(config(echo_upstream.url))
    _, body = await fetch(gw.url + "/public/x")
    assert received(body, "traceparent") == []
    (line,) = access_lines(capfd, gw)
    assert "trace_id" not in line


# ------------------------------------------------------------------ with `tracing:`


async def test_spans_of_a_token_request(echo_upstream, make_gateway, otlp_receiver, capfd):
    """A request on a token route: a server span, a token-lookup child (a cache miss, then a
    hit from the in-process cache: a child all the same, saying so), and a client span for the
    upstream exchange, which the upstream gets as its parent."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver)))
    token = await issue(gw)
    auth = {"Authorization": f"Bearer {token}"}
    status, body = await fetch(gw.url + "/api/items/1", auth)
    assert status == 200
    spans = await otlp_receiver.wait_for(lambda s: len(s) >= 3)
    (server,) = by_name(spans, "GET /api/*")
    (lookup,) = by_name(spans, "token lookup")
    (client,) = by_name(spans, "GET")
    assert server["kind"] == "server" and client["kind"] == "client"
    assert server["parent_span_id"] is None  # a new trace
    assert lookup["parent_span_id"] == server["span_id"]
    assert client["parent_span_id"] == server["span_id"]
    assert {s["trace_id"] for s in spans} == {server["trace_id"]}
    assert server["attributes"] == {
        "http.request.method": "GET",
        "url.path": "/api/items/1",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": gw.port,
        "gateway.grant": "authorization_code",
        "gateway.client_id": APP_ID,
        "http.response.status_code": 200,
        "http.route": "/api/*",
    }
    assert lookup["attributes"] == {"gateway.cache": "miss", "gateway.token_source": "store"}
    assert lookup["kind"] == "internal" and lookup["status_code"] == 0
    assert server["start_ns"] <= lookup["start_ns"] <= lookup["end_ns"] <= server["end_ns"]
    assert server["start_ns"] <= client["start_ns"] <= client["end_ns"] <= server["end_ns"]
    assert client["attributes"]["gateway.upstream"] == "api"
    assert client["attributes"]["server.port"] == echo_upstream.server.port
    assert client["attributes"]["http.response.status_code"] == 200
    assert server["resource"]["service.name"] == "oauth-gateway"
    # the upstream's parent is the gateway's client span
    (sent,) = received(body, "traceparent")
    assert sent == f"00-{server['trace_id']}-{client['span_id']}-01"
    (line,) = access_lines(capfd, gw)
    assert line["trace_id"] == server["trace_id"]

    await fetch(gw.url + "/api/items/2", auth)  # now cached in process
    spans = await otlp_receiver.wait_for(lambda s: len(s) >= 5)
    second = [s for s in spans if s["trace_id"] != server["trace_id"]]
    assert sorted(s["name"] for s in second) == ["GET", "GET /api/*", "token lookup"]
    (again,) = by_name(second, "GET /api/*")
    (hit,) = by_name(second, "token lookup")
    assert hit["parent_span_id"] == again["span_id"] and hit["kind"] == "internal"
    assert hit["attributes"] == {"gateway.cache": "hit", "gateway.token_source": "store"}
    assert again["start_ns"] <= hit["start_ns"] <= hit["end_ns"] <= again["end_ns"]
    assert again["attributes"]["gateway.client_id"] == APP_ID
    assert len({s["span_id"] for s in spans}) == len(spans) == 6


async def test_sampled_incoming_context_is_followed(echo_upstream, make_gateway, otlp_receiver):
    """A sampled traceparent is recorded even at sample_ratio 0: same trace, the caller's span
    as parent, its tracestate kept (in the span and upstream)."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver, sample_ratio=0.0)))
    _, body = await fetch(
        gw.url + "/public/p", {"traceparent": traceparent("01"), "tracestate": "rojo=1"}
    )
    spans = await otlp_receiver.wait_for(lambda s: len(s) >= 2)
    (server,) = by_name(spans, "GET /public/*")
    (client,) = by_name(spans, "GET")
    assert server["trace_id"] == TRACE
    assert server["parent_span_id"] == PARENT
    assert server["flags"] == 0x300  # the parent is known to be remote (OTLP SpanFlags)
    assert client["flags"] == 0x100  # the parent is known to be local
    assert server["trace_state"] == client["trace_state"] == "rojo=1"
    assert received(body, "traceparent") == [traceparent("01", parent=client["span_id"])]
    assert received(body, "tracestate") == ["rojo=1"]


async def test_unsampled_incoming_context_is_passed_on_not_recorded(
    echo_upstream, make_gateway, otlp_receiver, capfd
):
    """A traceparent that says not sampled is not recorded, even at sample_ratio 1; the
    upstream gets it as it came."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver)))
    _, body = await fetch(gw.url + "/public/p", {"traceparent": traceparent("00")})
    assert received(body, "traceparent") == [traceparent("00")]
    (line,) = access_lines(capfd, gw)
    assert line["trace_id"] == TRACE
    await gw.gateway.drain()  # flushes whatever was queued
    assert otlp_receiver.spans == []


async def test_unsampled_new_trace_is_started_and_propagated(
    echo_upstream, make_gateway, otlp_receiver, capfd
):
    """At sample_ratio 0 a request without context starts a new trace all the same: the
    upstream and the access log see it, nothing is recorded."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver, sample_ratio=0.0)))
    seen = set()
    for _ in range(3):
        _, body = await fetch(gw.url + "/public/p")
        (sent,) = received(body, "traceparent")
        trace = parse_traceparent(sent.encode())
        assert trace is not None and trace.flags == 0 and sent.startswith("00-")
        seen.add(trace.trace_id)
    assert len(seen) == 3
    assert {line["trace_id"] for line in access_lines(capfd, gw)} == seen
    await gw.gateway.drain()
    assert otlp_receiver.spans == []


async def test_tracestate_without_traceparent_is_dropped_from_a_new_trace(
    echo_upstream, make_gateway, otlp_receiver, capfd
):
    """A `tracestate` alone is no context: the request starts a new trace (the one-call path
    when it is not sampled), and the upstream gets the new traceparent without that state."""
    for ratio in (0.0, 1.0):
        gw = await make_gateway(
            config(echo_upstream.url, traced(otlp_receiver, sample_ratio=ratio))
        )
        _, body = await fetch(gw.url + "/public/p", {"tracestate": "rojo=00f067aa0ba902b7"})
        (sent,) = received(body, "traceparent")
        assert sent.endswith("-01" if ratio else "-00")
        assert received(body, "tracestate") == []
        (line,) = access_lines(capfd, gw)
        assert line["trace_id"] == sent.split("-")[1]
        await gw.gateway.drain()


async def test_refused_request_of_a_new_unsampled_trace_logs_its_trace_id(
    echo_upstream, make_gateway, otlp_receiver, capfd
):
    """A request without context that is refused (401, 404) still gets the new trace's id in
    its access line, one id per request, and nothing reaches the upstream or the collector."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver, sample_ratio=0.0)))
    assert (await fetch(gw.url + "/api/x"))[0] == 401
    assert (await fetch(gw.url + "/nowhere"))[0] == 404
    _, body = await fetch(gw.url + "/public/p")
    (sent,) = received(body, "traceparent")
    lines = access_lines(capfd, gw)
    assert [line["status"] for line in lines] == [401, 404, 200]
    ids = [line["trace_id"] for line in lines]
    assert all(re.fullmatch("[0-9a-f]{32}", i) and i != "0" * 32 for i in ids)
    assert len(set(ids)) == 3 and ids[2] == sent.split("-")[1]
    assert echo_upstream.requests == 1
    await gw.gateway.drain()
    assert otlp_receiver.spans == []


async def test_invalid_context_starts_a_new_trace_with_tracing(
    echo_upstream, make_gateway, otlp_receiver
):
    """With `tracing:`, an invalid traceparent is replaced by a new trace (its tracestate goes)."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver)))
    bad = traceparent(trace="0" * 32)
    _, body = await fetch(gw.url + "/public/p", {"traceparent": bad, "tracestate": "rojo=1"})
    spans = await otlp_receiver.wait_for(lambda s: len(s) >= 2)
    (server,) = by_name(spans, "GET /public/*")
    assert server["parent_span_id"] is None
    (sent,) = received(body, "traceparent")
    assert sent.split("-")[1] == server["trace_id"] != "0" * 32
    assert received(body, "tracestate") == []


async def test_tracing_without_collector_propagates_only(echo_upstream, make_gateway, capfd):
    """`tracing:` without `otlp_endpoint`: contexts are started and passed on, no SDK."""
    gw = await make_gateway(config(echo_upstream.url, {"sample_ratio": 1.0}))
    assert gw.gateway.runtime.recorder is None
    _, body = await fetch(gw.url + "/public/p")
    (sent,) = received(body, "traceparent")
    (line,) = access_lines(capfd, gw)
    assert sent.split("-")[1] == line["trace_id"]
    assert sent.endswith("-00")


async def test_refused_and_failed_requests_are_spans_too(make_gateway, otlp_receiver):
    """A 401 is a server span with its reason (no upstream span); an upstream that refuses
    connections gives a client span with the error and a 502 server span marked as an error."""
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await make_gateway(config(dead, traced(otlp_receiver)))
    status, _ = await fetch(gw.url + "/api/x")
    assert status == 401
    status, _ = await fetch(gw.url + "/public/x")
    assert status == 502
    spans = await otlp_receiver.wait_for(lambda s: len(s) >= 3)
    (refused,) = by_name(spans, "GET /api/*")
    assert refused["attributes"]["http.response.status_code"] == 401
    assert refused["attributes"]["gateway.reason"] == "missing_token"
    assert refused["status_code"] == 0  # a 4xx is not a server error
    assert not [s for s in spans if s["parent_span_id"] == refused["span_id"]]
    (failed,) = by_name(spans, "GET /public/*")
    (client,) = by_name(spans, "GET")
    assert failed["attributes"]["http.response.status_code"] == 502
    assert failed["status_code"] == 2  # STATUS_CODE_ERROR
    assert client["parent_span_id"] == failed["span_id"]
    assert client["attributes"]["error.type"] == failed["attributes"]["gateway.reason"]


async def test_failed_lookup_is_an_error_span(echo_upstream, make_gateway, otlp_receiver):
    """A token no source knows: the lookup's span ends in error with the refusal's reason, the
    401 server span names it too (a 4xx is no server error), and nothing went upstream."""
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver)))
    unknown = {"Authorization": "Bearer NeverIssuedTokenValue0123456789"}
    status, _ = await fetch(gw.url + "/api/x", unknown)
    assert status == 401
    spans = await otlp_receiver.wait_for(lambda s: len(s) >= 2)
    (server,) = by_name(spans, "GET /api/*")
    (lookup,) = by_name(spans, "token lookup")
    assert lookup["parent_span_id"] == server["span_id"]
    assert lookup["status_code"] == 2  # STATUS_CODE_ERROR
    reason = server["attributes"]["gateway.reason"]
    assert lookup["attributes"] == {"gateway.cache": "miss", "error.type": reason}
    assert server["status_code"] == 0 and server["attributes"]["http.response.status_code"] == 401
    assert len(spans) == 2 and echo_upstream.requests == 0


async def test_idp_and_redis_calls_are_children_of_the_lookup(
    echo_upstream, make_gateway, otlp_receiver, idp, redis_url
):
    """The token lookup's span has a child per call it makes: Redis (store, shared cache) and
    the introspection endpoint; a JWT's lookup fetches the JWKS in its span."""
    tokens = {
        "sources": [{"type": "store"}, idp.jwt_source(), idp.introspection_source()],
    }
    cfg = config(echo_upstream.url, traced(otlp_receiver), tokens=tokens, redis={"url": redis_url})
    gw = await make_gateway(cfg)
    idp.tokens["opaque-token-1"] = idp.claims(scope="read")
    status, _ = await fetch(gw.url + "/api/a", {"Authorization": "Bearer opaque-token-1"})
    assert status == 200
    jws = idp.sign(idp.claims(scope="read"))
    status, _ = await fetch(gw.url + "/api/b", {"Authorization": f"Bearer {jws}"})
    assert status == 200
    spans = await otlp_receiver.wait_for(lambda s: len(by_name(s, "token lookup")) >= 2)
    await asyncio.sleep(0.3)  # the shared-cache write ends after the answer
    spans = otlp_receiver.spans
    opaque, signed = sorted(
        by_name(spans, "token lookup"), key=lambda s: s["attributes"]["gateway.token_source"]
    )
    assert opaque["attributes"]["gateway.token_source"] == "introspection"
    assert signed["attributes"]["gateway.token_source"] == "jwt"
    children = [s for s in spans if s["parent_span_id"] == opaque["span_id"]]
    assert {s["name"] for s in children} == {"redis", "POST"}
    (post,) = by_name(children, "POST")
    assert post["kind"] == "client"
    assert post["attributes"] == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": idp.server.port,
        "url.path": "/introspect",
        "http.response.status_code": 200,
    }
    assert all(s["attributes"] == {"db.system.name": "redis"} for s in by_name(children, "redis"))
    jwks = [s for s in spans if s["parent_span_id"] == signed["span_id"] and s["name"] == "GET"]
    assert jwks and jwks[0]["attributes"]["url.path"] == "/jwks.json"


async def test_no_secret_in_any_span(echo_upstream, make_gateway, otlp_receiver, idp, capfd):
    """Tokens (header, query, form), appsecret proofs and times, the introspection client
    secret: none appears in any exported byte, attribute or event."""
    tokens = {"sources": [{"type": "store"}, idp.introspection_source()]}
    gw = await make_gateway(config(echo_upstream.url, traced(otlp_receiver), tokens=tokens))
    good = await issue(gw)
    idp.tokens["idp-known-token-xyz"] = idp.claims(scope="read", client_id=APP_ID)
    unknown = "NeverIssuedTokenValue0123456789"
    proof = compute_proof(good, APP_SECRET)
    now = str(int(time.time()))
    timed = compute_proof(good, APP_SECRET, int(now))
    form = f"access_token={good}&a=1".encode()
    requests = [
        ("GET", "/api/x", {"Authorization": f"Bearer {good}"}, None),
        ("GET", f"/api/x?access_token={good}&keep=1", {}, None),
        ("POST", "/api/x", {"Content-Type": "application/x-www-form-urlencoded"}, form),
        ("GET", "/api/x", {"Authorization": f"Bearer {unknown}"}, None),
        ("GET", "/api/x", {"Authorization": "Bearer idp-known-token-xyz"}, None),
        ("GET", f"/proof/x?appsecret_proof={proof}", {"Authorization": f"Bearer {good}"}, None),
        (
            "GET",
            f"/proof/x?appsecret_proof={timed}&appsecret_time={now}",
            {"Authorization": f"Bearer {good}"},
            None,
        ),
        ("GET", "/proof/x", {"Authorization": f"Bearer {good}", "X-Appsecret-Proof": proof}, None),
        ("GET", f"/public/x?access_token={good}&appsecret_proof={proof}", {}, None),
        ("GET", "/oauth20/access-token", {"Authorization": f"Bearer {good}"}, None),
    ]
    async with aiohttp.ClientSession() as s:
        for method, target, headers, data in requests:
            async with s.request(method, gw.url + target, headers=headers, data=data) as r:
                await r.read()
    await otlp_receiver.wait_for(lambda sp: len(by_name(sp, "POST")) >= 2)
    await gw.gateway.drain()  # everything exported
    spans = otlp_receiver.spans
    assert len([s for s in spans if s["kind"] == "server"]) == len(requests)
    secrets = [good, unknown, "idp-known-token-xyz", proof, timed, APP_SECRET, CLIENT_SECRET]
    raw = b"".join(otlp_receiver.bodies)
    dumped = repr(spans)
    for secret in secrets:
        assert secret.encode() not in raw, secret
        assert secret not in dumped, secret
    assert "Bearer" not in dumped and "Basic" not in dumped
    assert "access_token" not in dumped and "appsecret" not in dumped.replace("proof", "")
    capfd.readouterr()


# ------------------------------------------------------------------ a collector in trouble


async def _latencies(url: str, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.get(url) as r:
                assert r.status == 200
                await r.read()
            out.append(time.perf_counter() - t0)
    return out


async def _dropped(gw: Any) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("gateway_spans_dropped_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("trouble", ["hang", "down"])
async def test_collector_in_trouble_never_holds_requests(
    echo_upstream, make_gateway, otlp_receiver, trouble, capsys
):
    """A collector that accepts and never answers, or one that is not there: requests keep
    their latency (measured against the same gateway without tracing), and the spans that
    cannot be delivered are counted; closing the gateway is not held up for long either."""
    plain = await make_gateway(config(echo_upstream.url))
    otlp_receiver.mode = "hang"
    endpoint = otlp_receiver.endpoint if trouble == "hang" else f"http://127.0.0.1:{free_port()}"
    tracing = traced(otlp_receiver, otlp_endpoint=endpoint, export_timeout="1s", max_queue_size=16)
    gw = await make_gateway(config(echo_upstream.url, tracing))
    await _latencies(plain.url + "/public/x", 20)  # warm both
    await _latencies(gw.url + "/public/x", 20)
    base = await _latencies(plain.url + "/public/x", 150)
    traced_ms = await _latencies(gw.url + "/public/x", 150)
    deadline = time.monotonic() + 10
    dropped = await _dropped(gw)
    want = "queue_full" if trouble == "hang" else "export_failed"
    while dropped[want] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        dropped = await _dropped(gw)
    with capsys.disabled():
        print(
            f"\n[{trouble} collector] p50 {statistics.median(base) * 1e3:.2f} ms without "
            f"tracing, {statistics.median(traced_ms) * 1e3:.2f} ms traced; max "
            f"{max(traced_ms) * 1e3:.1f} ms (untraced max {max(base) * 1e3:.1f} ms); dropped {dropped}"
        )
    assert dropped[want] > 0
    assert max(traced_ms) < 0.5  # bounded: nothing waits for the collector (1 s timeout)
    assert statistics.median(traced_ms) < statistics.median(base) * 3 + 0.005
    if trouble == "hang":
        assert otlp_receiver.requests >= 1  # the exporter did reach it, and was held
    t0 = time.monotonic()
    await gw.gateway.drain()
    assert time.monotonic() - t0 < 8  # the flush on the way out is bounded


# ------------------------------------------------------------------ config, reload, start-up


@pytest.mark.parametrize(
    ("tracing", "problem"),
    [
        ({"otlp_endpoint": "otel-collector:4318"}, "http:// or https://"),
        ({"sample_ratio": 1.5}, "less than or equal to 1"),
        ({"sample_ratio": -0.1}, "greater than or equal to 0"),
        ({"max_queue_size": 0}, "greater than 0"),
        ({"service_name": ""}, "at least 1 character"),
        ({"headers": {"x": "y"}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_tracing_config_is_refused(tracing, problem):
    """The `tracing:` block is validated with the rest of the file."""
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(config("http://127.0.0.1:9", tracing))
    assert any(problem in p and p.startswith("tracing.") for p in err.value.problems)


async def test_reload_keeps_or_replaces_the_exporter(
    echo_upstream, make_gateway, otlp_receiver, tmp_path
):
    """A reload with the same `tracing:` keeps the exporter (and its queue); a changed one
    replaces it, the old one flushing in the background; removing it stops recording."""
    import yaml

    path = tmp_path / "gateway.yaml"
    cfg = config(echo_upstream.url, traced(otlp_receiver))
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    first = gw.gateway.runtime.recorder
    assert first is not None
    cfg["realm"] = "other"
    path.write_text(yaml.safe_dump(cfg))
    assert await gw.gateway.reload()
    assert gw.gateway.runtime.recorder is first
    cfg["tracing"]["sample_ratio"] = 0.5
    path.write_text(yaml.safe_dump(cfg))
    assert await gw.gateway.reload()
    second = gw.gateway.runtime.recorder
    assert second is not None and second is not first
    await fetch(gw.url + "/public/p", {"traceparent": traceparent("01")})
    await otlp_receiver.wait_for(lambda s: len(s) >= 2)
    del cfg["tracing"]
    path.write_text(yaml.safe_dump(cfg))
    assert await gw.gateway.reload()
    assert gw.gateway.runtime.recorder is None
    _, body = await fetch(gw.url + "/public/p", {"traceparent": traceparent("01")})
    assert received(body, "traceparent") == [traceparent("01")]  # passed through again


def test_without_tracing_the_sdk_is_not_loaded(tmp_path):
    """A gateway without `tracing:` (or without a collector) never loads the OpenTelemetry
    SDK's tracing or the exporter: nothing of it runs, not even at start-up. (redis-py imports
    the OpenTelemetry API and metrics SDK by itself when they are installed.)"""
    import subprocess
    import sys

    script = """
import asyncio, sys
from gateway.config import parse_config
from gateway.serve import Gateway

async def main(tracing):
    cfg = {"listen": {"host": "127.0.0.1", "port": 0}, "admin": None,
           "upstreams": {"a": {"url": "http://127.0.0.1:9"}},
           "routes": [{"name": "r", "path_prefix": "/", "upstream": "a"}]}
    if tracing:
        cfg["tracing"] = {"sample_ratio": 1.0}
    gw = Gateway(parse_config(cfg))
    await gw.start()
    await gw.close()

asyncio.run(main(False))
asyncio.run(main(True))
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace",
                                                     "opentelemetry.exporter", "gateway.tracing"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


async def test_forward_auth_decision_logs_its_trace_id(echo_upstream, make_gateway, capfd):
    """A forward-auth decision (allowed or not) names the trace the front proxy sent."""
    cfg = config(echo_upstream.url, forward_auth={"host": "127.0.0.1", "port": 0})
    gw = await make_gateway(cfg)
    token = await issue(gw)
    decide = f"http://127.0.0.1:{gw.gateway.ports['forward_auth']}/"
    base = {"X-Original-URI": "/api/x", "X-Original-Method": "GET", "traceparent": traceparent()}
    assert (await fetch(decide, {**base, "Authorization": f"Bearer {token}"}))[0] == 200
    assert (await fetch(decide, base))[0] == 401
    lines = access_lines(capfd, gw)
    assert [line["trace_id"] for line in lines] == [TRACE, TRACE]


def test_new_traces_are_sampled_by_their_trace_id():
    """A new trace is sampled exactly when TraceIdRatioBased would sample its trace-id, and
    every new trace has fresh, valid ids."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    from gateway.tracecontext import RequestTracer

    for ratio in (0.0, 0.01, 0.5, 1.0):
        bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        tracer = RequestTracer(object(), bound)  # type: ignore[arg-type]
        traces = [tracer.new_trace() for _ in range(2000)]
        assert len({t.trace_id for t in traces}) == 2000
        for t in traces:
            assert parse_traceparent(t.traceparent) is not None
            assert t.flags == (int(t.trace_id[16:], 16) < bound)
            assert t.traceparent.endswith(b"-01" if t.flags else b"-00")
        share = sum(t.flags for t in traces) / len(traces)
        assert abs(share - ratio) < 0.05


@settings(max_examples=400, deadline=None)
@given(
    pool=st.binary(min_size=0, max_size=80),
    slot=st.integers(-2, 4),
    below=st.one_of(st.sampled_from([0, 1, 1 << 63, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1)),
    sample_all=st.booleans(),
    zero=st.sampled_from([None, "trace", "span"]),
)
def test_new_traceparent_in_c_is_its_twin(pool, slot, below, sample_all, zero):
    """The C line of a new trace is the Python twin's for any bytes, bound and slot (all-zero
    ids, a slot past the pool's end or before it included: None from both), and a valid W3C
    traceparent otherwise."""
    from gateway.tracecontext import new_traceparent_py

    try:
        from gateway._trace import new_traceparent
    except ImportError:
        pytest.skip("a pure-Python build")
    at = slot * 24
    inside = slot >= 0 and at + 24 <= len(pool)
    if zero is not None and inside:
        start = at if zero == "trace" else at + 16
        size = 16 if zero == "trace" else 8
        pool = pool[:start] + bytes(size) + pool[start + size :]
    twin = new_traceparent_py(pool, slot, below, sample_all)
    assert new_traceparent(pool, slot, below, sample_all) == twin
    if twin is not None:
        assert inside
        assert len(twin) == 70 and twin.startswith("traceparent: ") and twin.endswith("\r\n")
        trace = parse_traceparent(twin[13:-2].encode())
        assert trace is not None and trace.trace_id == pool[at : at + 16].hex()
        low = int.from_bytes(pool[at + 8 : at + 16], "big")
        assert trace.flags == (1 if sample_all or low < below else 0)
    else:  # only for an all-zero id, or no 24 bytes at the slot
        ids = pool[at : at + 24] if slot >= 0 else b""
        assert len(ids) < 24 or not any(ids[:16]) or not any(ids[16:])


_FIELD_NAMES = st.sampled_from(
    [b"host", b"traceparent", b"tracestate", b"traceparents", b"tracepar", b"x-trace", b"accept"]
)


@settings(max_examples=400, deadline=None)
@given(
    headers=st.lists(st.tuples(_FIELD_NAMES, st.binary(max_size=8)), max_size=6),
    pool=st.binary(min_size=0, max_size=80),
    slot=st.integers(-1, 4),
    below=st.one_of(st.sampled_from([0, 1, 1 << 63, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1)),
    zero=st.booleans(),
)
def test_quiet_traceparent_in_c_is_its_twin(headers, pool, slot, below, zero):
    """The one-step line of an unsampled new trace: the C one is the twin's for any header list,
    bytes, bound and slot; it exists only when no field is named `traceparent` and the new trace
    is valid and not sampled, and it is then new_traceparent's line for the same slot."""
    from gateway.tracecontext import new_traceparent_py, quiet_traceparent_py

    try:
        from gateway._trace import quiet_traceparent
    except ImportError:
        pytest.skip("a pure-Python build")
    if zero and slot >= 0 and slot * 24 + 24 <= len(pool):
        pool = pool[: slot * 24] + bytes(16) + pool[slot * 24 + 16 :]
    twin = quiet_traceparent_py(headers, pool, slot, below.to_bytes(8, "big"))
    assert quiet_traceparent(headers, pool, slot, below.to_bytes(8, "big")) == twin
    full = new_traceparent_py(pool, slot, below, False)
    if (
        any(name == b"traceparent" for name, _ in headers)
        or full is None
        or full.endswith("-01\r\n")
    ):
        assert twin is None
    else:
        assert twin == full and twin.endswith("-00\r\n")


def test_quiet_traceparent_leaves_odd_input_to_the_full_path():
    """Input that is not exactly a list of (bytes, bytes) tuples, an int subclass as the slot,
    a bound that is not 8 bytes, gets None from C (the full path then runs), never an error or
    a wrong answer."""
    from gateway.tracecontext import quiet_traceparent_py

    try:
        from gateway._trace import quiet_traceparent
    except ImportError:
        pytest.skip("a pure-Python build")

    class Name(bytes):
        pass

    class Slot(int):
        pass

    pool = bytes(range(1, 49))
    zero = bytes(8)
    assert quiet_traceparent([(b"host", b"a")], pool, 0, zero) is not None
    for headers in ([(Name(b"host"), b"a")], [[b"host", b"a"]], [(b"host",)], ((b"host", b"a"),)):
        assert quiet_traceparent(headers, pool, 0, zero) is None
    assert quiet_traceparent([], pool, Slot(0), zero) is None
    assert quiet_traceparent([], bytearray(pool), 0, zero) is None
    for below in (bytes(7), bytes(9), Name(zero), 0):
        assert quiet_traceparent([], pool, 0, below) is None  # type: ignore[arg-type]
    for below in (bytes(7), bytes(9)):
        assert quiet_traceparent_py([], pool, 0, below) is None
