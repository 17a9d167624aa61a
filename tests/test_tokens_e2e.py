"""Token routes end to end through the proxy: every answer of SPEC section 4, sections 5-7."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.proof import compute_proof
from tests.fixtures.servers import base_config, raw_exchange

SECRET = "app-secret"
ROUTES = [
    {"name": "public", "path": "/public", "upstream": "api", "auth": "public"},
    {
        "name": "payments",
        "path_prefix": "/v1/payments",
        "upstream": "api",
        "grants": ["authorization_code"],
        "scopes": ["payments"],
    },
    {
        "name": "server",
        "path_prefix": "/v1/server",
        "upstream": "api",
        "appsecret_proof": "required",
    },
    {
        "name": "optional",
        "path_prefix": "/v1/optional",
        "upstream": "api",
        "appsecret_proof": "optional",
    },
    {"name": "noquery", "path_prefix": "/v1/noquery", "upstream": "api", "query_token": False},
    {"name": "fwd", "path_prefix": "/v1/fwd", "upstream": "api", "forward_token": True},
    {"name": "cors", "path_prefix": "/v1/cors", "upstream": "api", "preflight": "pass"},
    {"name": "api", "path_prefix": "/v1", "upstream": "api"},
]
APPS = [{"client_id": "web-app", "secrets": [SECRET, "old-secret"], "proof_max_age": "5m"}]


async def _gateway(make_gateway, echo_upstream, **overrides):
    cfg = base_config(echo_upstream.url, routes=ROUTES, apps=APPS, **overrides)
    gw = await make_gateway(cfg)
    return gw, gw.gateway.runtime.validator


async def _get(url, headers=None, method="GET", data=None):
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, headers=headers, data=data) as r,
    ):
        body = await r.read()
        return r.status, r.headers, body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("grant", "code_only_status"),
    [
        ("authorization_code", 200),
        ("implicit", 403),
        ("client_credentials", 403),
        ("password", 403),
        ("refresh_token", 403),
    ],
)
async def test_each_grant_on_code_only_and_open_routes(
    make_gateway, echo_upstream, grant, code_only_status
):
    """Only authorization-code tokens pass code-only routes; every grant passes ordinary ones."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue(grant, "web-app", "alice", "payments")
    status, headers, body = await _get(gw.url + "/v1/payments/1", _bearer(token))
    assert status == code_only_status
    if status == 403:
        assert b'"insufficient_grant"' in body
        assert 'error="insufficient_grant"' in headers["WWW-Authenticate"]
    status, _, _ = await _get(gw.url + "/v1/items", _bearer(token))
    assert status == 200


async def test_unknown_grant_is_refused_on_code_only_route(make_gateway, echo_upstream, idp):
    """A token whose grant claim maps to nothing is grant `unknown` and refused where grants are listed."""
    idp.tokens["weird"] = {
        "client_id": "web-app",
        "sub": "a",
        "scope": "payments",
        "grant_type": "urn:custom",
        "exp": int(time.time()) + 600,
    }
    gw, _ = await _gateway(
        make_gateway, echo_upstream, tokens={"sources": [idp.introspection_source()]}
    )
    status, _, body = await _get(gw.url + "/v1/payments/1", _bearer("weird"))
    assert status == 403
    assert b"insufficient_grant" in body
    status, _, _ = await _get(gw.url + "/v1/items", _bearer("weird"))
    assert status == 200
    assert [v for k, v in echo_upstream.last["headers"] if k.lower() == "x-auth-grant"] == [
        "unknown"
    ]


async def test_identity_headers_and_credentials_upstream(make_gateway, echo_upstream):
    """The upstream sees X-Auth-* from the token, never the client's copies nor the credentials."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("authorization_code", "web-app", "alice", "payments read")
    spoof = {
        **_bearer(token),
        "X-Auth-Subject": "root",
        "X_Auth_Scope": "admin",
        "Connection": "X-Auth-Grant",
        "X-Auth-Grant": "implicit",
    }
    status, _, _ = await _get(gw.url + "/v1/payments/1?keep=1", spoof)
    assert status == 200
    seen = [(k.lower(), v) for k, v in echo_upstream.last["headers"]]
    assert ("x-auth-subject", "alice") in seen
    assert ("x-auth-client-id", "web-app") in seen
    assert ("x-auth-scope", "payments read") in seen
    assert ("x-auth-grant", "authorization_code") in seen
    assert [k for k, _ in seen].count("x-auth-subject") == 1
    assert "x_auth_scope" not in [k for k, _ in seen]
    assert "authorization" not in [k for k, _ in seen]
    assert echo_upstream.last["query"] == "keep=1"


async def test_forward_token_true_keeps_credentials(make_gateway, echo_upstream):
    """With forward_token: true the upstream receives the Authorization header and query token."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("implicit", "web-app", "alice", "")
    status, _, _ = await _get(gw.url + "/v1/fwd", _bearer(token))
    assert status == 200
    assert ("authorization", f"Bearer {token}") in [
        (k.lower(), v) for k, v in echo_upstream.last["headers"]
    ]


async def test_missing_token_is_401_without_error_attribute(make_gateway, echo_upstream):
    """No token: 401 with a bare `Bearer realm=` challenge and body error missing_token."""
    gw, _ = await _gateway(make_gateway, echo_upstream)
    status, headers, body = await _get(gw.url + "/v1/items")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert b'"error":"missing_token"' in body
    assert echo_upstream.requests == 0


@pytest.mark.parametrize(
    ("path", "headers_kind", "status"),
    [
        ("/v1/items?access_token=T", "bearer", 400),
        ("/v1/items?access_token=T&access_token=T", None, 400),
        ("/v1/items", "malformed", 400),
        ("/v1/items", "empty", 400),
        ("/v1/noquery?access_token=T", None, 400),
        ("/v1/items", "two-headers", 400),
    ],
    ids=[
        "header-and-query",
        "query-twice",
        "malformed-header",
        "empty-bearer",
        "query-refused",
        "header-twice",
    ],
)
async def test_invalid_requests(make_gateway, echo_upstream, path, headers_kind, status):
    """Token sent two ways, twice, malformed, or in a refused query: 400 invalid_request."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("implicit", "web-app", "alice", "")
    path = path.replace("T", token)
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += {
        "bearer": f"Authorization: Bearer {token}\r\n",
        "malformed": "Authorization: Bearer a b\r\n",
        "empty": "Authorization: Bearer \r\n",
        "two-headers": f"Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n",
        None: "",
    }[headers_kind]
    out = await raw_exchange(gw.port, (head + "\r\n").encode())
    assert out.startswith(b"HTTP/1.1 %d" % status)
    assert b'error="invalid_request"' in out
    assert token.encode() not in out
    assert echo_upstream.requests == 0


async def test_query_token_answer_is_private(make_gateway, echo_upstream):
    """A token in the query string makes the answer `Cache-Control: private` (RFC 6750 2.3)."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("implicit", "web-app", "alice", "")
    status, headers, _ = await _get(gw.url + f"/v1/items?access_token={token}")
    assert status == 200
    assert headers["Cache-Control"] == "private"
    assert "access_token" not in echo_upstream.last["query"]


async def test_unknown_expired_and_revoked_tokens_are_401(make_gateway, echo_upstream):
    """Unknown, expired and revoked tokens get 401 invalid_token."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    short = await v.issue("implicit", "web-app", "alice", "", ttl_seconds=1)
    revoked = await v.issue("implicit", "web-app", "alice", "")
    assert (await _get(gw.url + "/v1/items", _bearer(short)))[0] == 200
    status, _, _ = await _get(gw.url + "/oauth20/access-token", _bearer(revoked), method="DELETE")
    assert status == 200
    await asyncio.sleep(1.1)
    for token in ("nope", short, revoked):
        status, headers, body = await _get(gw.url + "/v1/items", _bearer(token))
        assert status == 401
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert b'"invalid_token"' in body


async def test_insufficient_scope(make_gateway, echo_upstream):
    """A token without a required scope: 403 insufficient_scope with scope="..."."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("authorization_code", "web-app", "alice", "read")
    status, headers, body = await _get(gw.url + "/v1/payments/1", _bearer(token))
    assert status == 403
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert 'scope="payments"' in headers["WWW-Authenticate"]
    assert b'"insufficient_scope"' in body
    assert echo_upstream.requests == 0


async def test_appsecret_proof_rules(make_gateway, echo_upstream):
    """Required proof: missing 400, wrong 403, right 200 (any secret, any hex case, query or header)."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("authorization_code", "web-app", "alice", "")
    other = await v.issue("authorization_code", "unknown-app", "alice", "")
    good = compute_proof(token, SECRET)
    old = compute_proof(token, "old-secret")
    now = str(int(time.time()))
    timed = compute_proof(token, SECRET, int(now))
    stale = str(int(time.time()) - 3600)
    url = gw.url + "/v1/server"
    cases = [
        ({}, "", 400),
        ({"X-Appsecret-Proof": "00" * 32}, "", 403),
        ({"X-Appsecret-Proof": good[:10]}, "", 403),
        ({"X-Appsecret-Proof": good.upper()}, "", 200),
        ({}, f"?appsecret_proof={good}", 200),
        ({"X-Appsecret-Proof": old}, "", 200),
        ({"X-Appsecret-Proof": timed, "X-Appsecret-Time": now}, "", 200),
        (
            {
                "X-Appsecret-Proof": compute_proof(token, SECRET, int(stale)),
                "X-Appsecret-Time": stale,
            },
            "",
            403,
        ),
        ({"X-Appsecret-Proof": good, "X-Appsecret-Time": "soon"}, "", 400),
        ({"X-Appsecret-Proof": good}, f"?appsecret_proof={old}", 400),
    ]
    for extra, query, expected in cases:
        status, _, body = await _get(url + query, {**_bearer(token), **extra})
        assert status == expected, (extra, query, body)
        if expected == 403:
            assert b"invalid_appsecret_proof" in body
    status, _, body = await _get(url, {**_bearer(other), "X-Appsecret-Proof": good})
    assert status == 403  # no app for that client_id
    status, _, _ = await _get(gw.url + "/v1/optional", _bearer(token))
    assert status == 200
    status, _, _ = await _get(
        gw.url + "/v1/optional", {**_bearer(token), "X-Appsecret-Proof": "ab"}
    )
    assert status == 403
    assert echo_upstream.requests == 5  # 4 accepted proofs + 1 optional without proof
    assert not any(k.lower().startswith("x-appsecret") for k, _ in echo_upstream.last["headers"])


async def test_preflight_pass_goes_upstream_without_token(make_gateway, echo_upstream):
    """With preflight: pass a CORS preflight is forwarded untouched; other OPTIONS still need a token."""
    gw, _ = await _gateway(make_gateway, echo_upstream)
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert (await _get(gw.url + "/v1/cors/x", pre, method="OPTIONS"))[0] == 200
    assert (await _get(gw.url + "/v1/cors/x", {}, method="OPTIONS"))[0] == 401
    assert (await _get(gw.url + "/v1/items", pre, method="OPTIONS"))[0] == 401
    assert echo_upstream.requests == 1


async def test_form_body_token(make_gateway, echo_upstream):
    """With form_param on, a urlencoded body token authenticates and is removed before the upstream."""
    tokens = {"sources": [{"type": "store"}], "form_param": True}
    gw, v = await _gateway(make_gateway, echo_upstream, tokens=tokens)
    token = await v.issue("implicit", "web-app", "alice", "")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = await _get(
        gw.url + "/v1/items", form, method="POST", data=f"a=1&access_token={token}&b=2"
    )
    assert status == 200
    assert echo_upstream.last["body_size"] == len("a=1&b=2")
    status, _, _ = await _get(
        gw.url + "/v1/items",
        {**form, **_bearer(token)},
        method="POST",
        data=f"access_token={token}",
    )
    assert status == 400


async def test_expect_continue_refused_before_body(make_gateway, echo_upstream):
    """`Expect: 100-continue` without a valid token gets the 401 and no `100 Continue`."""
    gw, _ = await _gateway(make_gateway, echo_upstream)
    out = await raw_exchange(
        gw.port,
        b"POST /v1/items HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 401")
    assert b"100 Continue" not in out
    assert echo_upstream.requests == 0


async def test_introspection_source_and_coalescing(make_gateway, echo_upstream, idp):
    """50 concurrent first requests with one token cause one introspection call."""
    idp.tokens["opaque-1"] = {
        "client_id": "web-app",
        "sub": "bob",
        "scope": "payments",
        "grant_type": "code",
        "exp": int(time.time()) + 600,
    }
    gw, _ = await _gateway(
        make_gateway, echo_upstream, tokens={"sources": [idp.introspection_source()]}
    )
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.get(gw.url + "/v1/payments/1", headers=_bearer("opaque-1")) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert set(statuses) == {200}
    assert idp.introspect_calls == 1


async def test_jwt_source(make_gateway, echo_upstream, idp):
    """A signed JWT is checked locally: good passes, implicit refused on code-only, tampered 401."""
    gw, _ = await _gateway(make_gateway, echo_upstream, tokens={"sources": [idp.jwt_source()]})
    code = idp.sign(idp.claims(scope="payments"))
    implicit = idp.sign(idp.claims(scope="payments", grant_type="implicit"), alg="ES256")
    assert (await _get(gw.url + "/v1/payments/1", _bearer(code)))[0] == 200
    assert (await _get(gw.url + "/v1/payments/1", _bearer(implicit)))[0] == 403
    tampered = code[:-4] + ("AAAA" if not code.endswith("AAAA") else "BBBB")
    assert (await _get(gw.url + "/v1/payments/1", _bearer(tampered)))[0] == 401


async def test_idp_outage_is_503_never_401(make_gateway, echo_upstream, idp):
    """An unreachable IdP answers 503 + Retry-After for unseen tokens; cached tokens keep working."""
    idp.tokens["known"] = {
        "client_id": "web-app",
        "sub": "bob",
        "scope": "",
        "grant_type": "implicit",
        "exp": int(time.time()) + 600,
    }
    gw, _ = await _gateway(
        make_gateway, echo_upstream, tokens={"sources": [idp.introspection_source()]}
    )
    assert (await _get(gw.url + "/v1/items", _bearer("known")))[0] == 200
    idp.introspect_mode = "fail"
    status, headers, body = await _get(gw.url + "/v1/items", _bearer("unseen"))
    assert status == 503
    assert headers["Retry-After"].isdigit()
    assert b'"temporarily_unavailable"' in body
    await idp.stop()
    assert (await _get(gw.url + "/v1/items", _bearer("unseen2")))[0] == 503
    assert (await _get(gw.url + "/v1/items", _bearer("known")))[0] == 200


async def test_redis_store_outage_is_503(make_gateway, echo_upstream, redis_server, redis_url):
    """With the Redis store down and no other source, an uncached token gets 503, not 401."""
    gw, v = await _gateway(make_gateway, echo_upstream, redis={"url": redis_url})
    cached = await v.issue("implicit", "web-app", "alice", "")
    fresh = await v.issue("implicit", "web-app", "alice", "")
    assert (await _get(gw.url + "/v1/items", _bearer(cached)))[0] == 200
    redis_server.stop()
    try:
        assert (await _get(gw.url + "/v1/items", _bearer(fresh)))[0] == 503
        assert (await _get(gw.url + "/v1/items", _bearer(cached)))[0] == 200
        status, _, _ = await _get(
            gw.url + "/oauth20/access-token", _bearer(cached), method="DELETE"
        )
        assert status == 503
    finally:
        redis_server.start()


async def test_session_endpoint(make_gateway, echo_upstream):
    """GET shows the session with no-store; DELETE revokes; the token is refused afterwards."""
    gw, v = await _gateway(make_gateway, echo_upstream)
    token = await v.issue("authorization_code", "web-app", "alice", "payments read")
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/oauth20/access-token", headers=_bearer(token)) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == "no-store"
            body = await r.json()
        assert body["active"] is True
        assert body["access_token"] == token
        assert (body["client_id"], body["sub"], body["grant"]) == (
            "web-app",
            "alice",
            "authorization_code",
        )
        assert body["scope"] == "payments read"
        assert 365 * 86400 - 60 < body["expires_in"] <= 365 * 86400
        async with s.delete(gw.url + "/oauth20/access-token", headers=_bearer(token)) as r:
            assert r.status == 200
            assert await r.json() == {"revoked": True}
        async with s.get(gw.url + "/oauth20/access-token", headers=_bearer(token)) as r:
            assert r.status == 401
        async with s.post(gw.url + "/oauth20/access-token", headers=_bearer(token)) as r:
            assert r.status == 405
            assert r.headers["Allow"] == "GET, HEAD, DELETE"
        async with s.get(gw.url + "/oauth20/access-token") as r:
            assert r.status == 401
    assert echo_upstream.requests == 0


async def test_overloaded_is_503(make_gateway, echo_upstream):
    """Beyond max_in_flight requests the gateway answers 503 overloaded."""
    routes = [{"name": "slow", "path_prefix": "/", "upstream": "api", "auth": "public"}]
    gw = await make_gateway(
        base_config(echo_upstream.url, routes=routes, limits={"max_in_flight": 2})
    )
    busy = [asyncio.create_task(_get(gw.url + "/slow/0.5")) for _ in range(2)]
    await asyncio.sleep(0.2)
    status, headers, body = await _get(gw.url + "/now")
    assert status == 503
    assert b'"overloaded"' in body
    assert "Retry-After" in headers
    assert [r[0] for r in await asyncio.gather(*busy)] == [200, 200]


async def test_websocket_on_token_route_after_checks(make_gateway, aiohttp_server):
    """A WebSocket upgrade on a token route needs a valid token and then carries frames."""

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(request.headers.get("X-Auth-Subject", "?"))
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", ws_handler)
    server = await aiohttp_server(app)
    gw, v = await _gateway(
        make_gateway, type("U", (), {"url": f"http://127.0.0.1:{server.port}"})()
    )
    token = await v.issue("implicit", "web-app", "carol", "")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with s.ws_connect(gw.url + "/v1/ws"):
                pass
        assert err.value.status == 401
        async with s.ws_connect(gw.url + "/v1/ws", headers=_bearer(token)) as ws:
            msg = await ws.receive(timeout=3)
            assert msg.data == "carol"


async def test_redis_down_at_start_keeps_serving(make_gateway, echo_upstream, idp):
    """A gateway started while Redis is down serves from the next sources and is ready."""
    from tests.fixtures.servers import free_port

    idp.tokens["idp-token"] = {
        "client_id": "web-app",
        "sub": "dan",
        "scope": "",
        "grant_type": "implicit",
        "exp": int(time.time()) + 600,
    }
    tokens = {"sources": [{"type": "store"}, idp.introspection_source()]}
    gw, _ = await _gateway(
        make_gateway,
        echo_upstream,
        tokens=tokens,
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"},
    )
    assert (await _get(gw.admin_url + "/readyz"))[0] == 200
    assert (await _get(gw.url + "/public"))[0] == 200
    assert (await _get(gw.url + "/v1/items", _bearer("idp-token")))[0] == 200
    assert (await _get(gw.url + "/v1/items", _bearer("nobody-knows")))[0] == 503


async def test_large_form_body_with_token_is_not_stalled(make_gateway, echo_upstream):
    """A form body larger than the relay buffer is read whole, the token found and removed."""
    tokens = {"sources": [{"type": "store"}], "form_param": True}
    gw, v = await _gateway(make_gateway, echo_upstream, tokens=tokens)
    token = await v.issue("implicit", "web-app", "alice", "")
    body = f"access_token={token}&data=" + "x" * 600_000
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = await asyncio.wait_for(_get(gw.url + "/v1/items", form, "POST", body), 5)
    assert status == 200
    assert echo_upstream.last["body_size"] == len("data=") + 600_000


async def test_reload_with_new_token_settings_answers_lookups_in_flight(
    make_gateway, echo_upstream, idp, tmp_path
):
    """A reload that replaces the validator lets a token lookup already in flight finish."""
    import yaml

    idp.tokens["slow"] = {
        "client_id": "c",
        "sub": "s",
        "scope": "",
        "grant_type": "implicit",
        "exp": int(time.time()) + 600,
    }
    idp.introspect_mode, idp.delay = "slow", 0.5
    cfg = base_config(
        echo_upstream.url,
        tokens={"sources": [idp.introspection_source()]},
        routes=[{"name": "api", "path_prefix": "/", "upstream": "api"}],
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = await make_gateway(cfg, str(path))
    pending = asyncio.create_task(_get(gw.url + "/x", _bearer("slow")))
    await asyncio.sleep(0.2)  # the introspection call is under way
    cfg["tokens"]["cache"] = {"ttl": "1m"}
    path.write_text(yaml.safe_dump(cfg))
    assert await gw.gateway.reload()
    status, _, _ = await asyncio.wait_for(pending, 3)
    assert status == 200
