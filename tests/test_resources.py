"""SPEC section 12: audience-bound tokens (RFC 8707 / RFC 9068) and protected-resource metadata
(RFC 9728): the `resources` block, per-route `resource`, the well-known documents and the
`resource_metadata` challenge parameter, through the proxy, the session endpoint and
forward-auth, for tokens from the store, introspection and JWT sources."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway.authn.store import Binding
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.fixtures.servers import base_config

PAY = "https://api.example.com/payments"
ROOT = "https://root.example.com"
PAY_META = "https://api.example.com/.well-known/oauth-protected-resource/payments"
RESOURCES = [
    {
        "id": PAY,
        "authorization_servers": ["https://idp.example/"],
        "scopes_supported": ["payments", "payments.read"],
        "documentation": "https://docs.example.com/payments",
    },
    {"id": ROOT, "authorization_servers": ["https://idp.example/", "https://other.example/"]},
]
ROUTES = [
    {
        "name": "payments",
        "path_prefix": "/payments",
        "upstream": "api",
        "resource": PAY,
        "scopes": ["payments"],
    },
    {"name": "root", "path_prefix": "/root", "upstream": "api", "resource": ROOT},
    {"name": "plain", "path_prefix": "/plain", "upstream": "api", "scopes": ["payments"]},
]


async def _request(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers) as r:
        return r.status, r.headers, await r.read()


async def _gateway(make_gateway, upstream_url: str, **overrides: Any):
    cfg = base_config(upstream_url, routes=ROUTES, resources=RESOURCES, **overrides)
    return await make_gateway(cfg)


# -- configuration ------------------------------------------------------------------------------


def test_route_resource_must_be_configured() -> None:
    cfg = base_config("http://127.0.0.1:1", routes=ROUTES[:1])
    with pytest.raises(ConfigError, match=r"routes\[0\].resource: no entry of `resources`"):
        parse_config(cfg)


@pytest.mark.parametrize(
    "bad_id", ["api.example.com", "https://x.example/a?b=1", "https://x.example/a#f", "ftp://x"]
)
def test_resource_id_must_be_an_absolute_url(bad_id: str) -> None:
    cfg = base_config(
        "http://127.0.0.1:1", resources=[{"id": bad_id, "authorization_servers": ["https://i/"]}]
    )
    with pytest.raises(ConfigError, match=r"resources\[0\]\.id"):
        parse_config(cfg)


def test_two_resources_with_one_metadata_path_are_refused() -> None:
    resources = [
        {"id": "https://a.example/x", "authorization_servers": ["https://i/"]},
        {"id": "https://b.example/x", "authorization_servers": ["https://i/"]},
    ]
    with pytest.raises(ConfigError, match="same metadata URL path"):
        parse_config(base_config("http://127.0.0.1:1", resources=resources))


def test_public_route_cannot_have_a_resource_or_sender_constraint() -> None:
    for extra in ({"resource": PAY}, {"sender_constraint": "dpop"}):
        route = {"name": "p", "path": "/p", "upstream": "api", "auth": "public", **extra}
        with pytest.raises(ConfigError, match="public route"):
            parse_config(base_config("http://127.0.0.1:1", routes=[route], resources=RESOURCES))


def test_jwt_audience_is_optional() -> None:
    src = {"type": "jwt", "jwks_url": "http://127.0.0.1:1/jwks", "issuer": "https://i/"}
    cfg = parse_config(base_config("http://127.0.0.1:1", tokens={"sources": [src]}))
    assert cfg.tokens.sources[0].audience is None  # type: ignore[union-attr]


def test_unquoted_off_sender_constraint() -> None:
    route = {"name": "r", "path": "/r", "upstream": "api", "sender_constraint": False}
    cfg = parse_config(base_config("http://127.0.0.1:1", routes=[route]))
    assert cfg.routes[0].sender_constraint == "off"


# -- RFC 9728 documents -------------------------------------------------------------------------


async def test_metadata_documents(make_gateway, echo_upstream) -> None:
    """Path-suffixed and root forms, any Host, no token, the members SPEC 12 lists."""
    gw = await _gateway(make_gateway, echo_upstream.url)
    status, headers, body = await _request(
        f"{gw.url}/.well-known/oauth-protected-resource/payments",
        {"Host": "anything.example:1234"},
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(body) == {
        "resource": PAY,
        "authorization_servers": ["https://idp.example/"],
        "scopes_supported": ["payments", "payments.read"],
        "bearer_methods_supported": ["header", "query"],
        "resource_documentation": "https://docs.example.com/payments",
    }
    status, headers, body = await _request(f"{gw.url}/.well-known/oauth-protected-resource")
    assert status == 200
    assert json.loads(body) == {
        "resource": ROOT,
        "authorization_servers": ["https://idp.example/", "https://other.example/"],
        "scopes_supported": [],
        "bearer_methods_supported": ["header", "query"],
    }
    assert echo_upstream.requests == 0


async def test_metadata_head_and_other_methods(make_gateway, echo_upstream) -> None:
    gw = await _gateway(make_gateway, echo_upstream.url)
    url = f"{gw.url}/.well-known/oauth-protected-resource/payments"
    status, headers, body = await _request(url, method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) > 0
    for method in ("POST", "DELETE", "PUT", "OPTIONS"):
        status, headers, body = await _request(url, method=method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
    # a CORS preflight (a browser MCP client sends MCP-Protocol-Version) is answered
    status, headers, _ = await _request(
        url,
        {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        method="OPTIONS",
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_metadata_conditional_members(make_gateway, echo_upstream) -> None:
    resources = [
        {"id": "https://a.example/dpop", "authorization_servers": ["https://i/"]},
        {"id": "https://a.example/mtls", "authorization_servers": ["https://i/"]},
        {"id": "https://a.example/mixed", "authorization_servers": ["https://i/"]},
    ]
    routes = [
        {"name": "d1", "path": "/d1", "upstream": "api", "resource": resources[0]["id"],
         "sender_constraint": "dpop", "scopes": ["a"]},
        {"name": "d2", "path": "/d2", "upstream": "api", "resource": resources[0]["id"],
         "sender_constraint": "dpop", "scopes": ["b", "a"], "query_token": False},
        {"name": "m1", "path": "/m1", "upstream": "api", "resource": resources[1]["id"],
         "sender_constraint": "mtls", "query_token": False},
        {"name": "x1", "path": "/x1", "upstream": "api", "resource": resources[2]["id"],
         "sender_constraint": "dpop"},
        {"name": "x2", "path": "/x2", "upstream": "api", "resource": resources[2]["id"]},
    ]  # fmt: skip
    cfg = base_config(
        echo_upstream.url,
        routes=routes,
        resources=resources,
        tokens={"form_param": True, "dpop": {"algorithms": ["ES256", "EdDSA"]}},
    )
    gw = await make_gateway(cfg)
    base = f"{gw.url}/.well-known/oauth-protected-resource"
    dpop = json.loads((await _request(f"{base}/dpop"))[2])
    assert dpop["dpop_bound_access_tokens_required"] is True
    assert dpop["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    assert dpop["scopes_supported"] == ["a", "b"]
    assert dpop["bearer_methods_supported"] == ["header", "query", "body"]
    assert "tls_client_certificate_bound_access_tokens" not in dpop
    mtls = json.loads((await _request(f"{base}/mtls"))[2])
    assert mtls["tls_client_certificate_bound_access_tokens"] is True
    assert mtls["bearer_methods_supported"] == ["header", "body"]
    assert "dpop_bound_access_tokens_required" not in mtls
    mixed = json.loads((await _request(f"{base}/mixed"))[2])
    assert "dpop_bound_access_tokens_required" not in mixed
    assert "tls_client_certificate_bound_access_tokens" not in mixed


async def test_no_dpop_algorithms_without_dpop(make_gateway, echo_upstream) -> None:
    gw = await _gateway(make_gateway, echo_upstream.url)
    _, _, body = await _request(f"{gw.url}/.well-known/oauth-protected-resource/payments")
    assert "dpop_signing_alg_values_supported" not in json.loads(body)


async def test_no_resources_no_metadata(make_gateway, echo_upstream) -> None:
    """Without `resources` the well-known path is an ordinary path (here: the public route)."""
    gw = await make_gateway(base_config(echo_upstream.url))
    status, _, _ = await _request(f"{gw.url}/.well-known/oauth-protected-resource")
    assert status == 200
    assert echo_upstream.last["path"] == "/.well-known/oauth-protected-resource"


# -- audience -----------------------------------------------------------------------------------


async def test_audience_from_store_records(make_gateway, echo_upstream) -> None:
    gw = await _gateway(make_gateway, echo_upstream.url)
    v = gw.gateway.runtime.validator
    mine = await v.issue("code", "app", "alice", "payments", binding=Binding(audience=(PAY,)))
    both = await v.issue("code", "app", "alice", "payments", binding=Binding(audience=(ROOT, PAY)))
    other = await v.issue("code", "app", "alice", "payments", binding=Binding(audience=(ROOT,)))
    none = await v.issue("code", "app", "alice", "payments")
    for token, expected in ((mine, 200), (both, 200), (other, 401), (none, 401)):
        for _ in range(2):  # the second answer comes from the cache: audience checked again
            status, headers, body = await _request(
                f"{gw.url}/payments/1", {"Authorization": f"Bearer {token}"}
            )
            assert status == expected
            if status == 401:
                assert json.loads(body) == {
                    "error": "invalid_token",
                    "error_description": "The access token is not for this resource.",
                }
                assert headers["WWW-Authenticate"] == (
                    'Bearer realm="gateway", error="invalid_token", error_description="The '
                    'access token is not for this resource.", scope="payments", '
                    f'resource_metadata="{PAY_META}"'
                )
    # a cached token for one resource is refused on another
    status, _, _ = await _request(f"{gw.url}/root/x", {"Authorization": f"Bearer {mine}"})
    assert status == 401
    status, _, _ = await _request(f"{gw.url}/root/x", {"Authorization": f"Bearer {other}"})
    assert status == 200
    # a route without a resource takes any audience
    for token in (mine, other, none):
        status, _, _ = await _request(f"{gw.url}/plain", {"Authorization": f"Bearer {token}"})
        assert status == 200


async def test_challenges_carry_resource_metadata(make_gateway, echo_upstream) -> None:
    gw = await _gateway(make_gateway, echo_upstream.url)
    v = gw.gateway.runtime.validator
    noscope = await v.issue("code", "app", "alice", "read", binding=Binding(audience=(PAY,)))
    status, headers, body = await _request(f"{gw.url}/payments/1")
    assert status == 401
    assert json.loads(body)["error"] == "missing_token"
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="gateway", scope="payments", resource_metadata="{PAY_META}"'
    )
    status, headers, _ = await _request(f"{gw.url}/payments/1", {"Authorization": "Bearer nope"})
    assert status == 401
    assert headers["WWW-Authenticate"].endswith(f'scope="payments", resource_metadata="{PAY_META}"')
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, headers, _ = await _request(
        f"{gw.url}/payments/1", {"Authorization": f"Bearer {noscope}"}
    )
    assert status == 403
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="gateway", error="insufficient_scope", error_description="The access '
        'token lacks a scope this resource requires.", scope="payments", '
        f'resource_metadata="{PAY_META}"'
    )
    # a root resource: its metadata URL has no path suffix; no scope= (the route needs none)
    status, headers, _ = await _request(f"{gw.url}/root/x")
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="gateway", resource_metadata='
        '"https://root.example.com/.well-known/oauth-protected-resource"'
    )
    # routes without a resource: the RFC 6750 challenge as before
    status, headers, _ = await _request(f"{gw.url}/plain")
    assert headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


async def test_audience_from_introspection(make_gateway, echo_upstream, idp) -> None:
    gw = await _gateway(
        make_gateway, echo_upstream.url, tokens={"sources": [idp.introspection_source()]}
    )
    idp.tokens["as-string"] = {"active": True, "aud": PAY, "scope": "payments", "sub": "a"}
    idp.tokens["as-array"] = {"active": True, "aud": ["x", PAY], "scope": "payments"}
    idp.tokens["other"] = {"active": True, "aud": ["x", ROOT], "scope": "payments"}
    idp.tokens["none"] = {"active": True, "scope": "payments"}
    for token, expected in (("as-string", 200), ("as-array", 200), ("other", 401), ("none", 401)):
        for _ in range(2):
            status, _, _ = await _request(
                f"{gw.url}/payments", {"Authorization": f"Bearer {token}"}
            )
            assert status == expected, token
    assert idp.introspect_calls == 4  # the second answers came from the cache


async def test_audience_from_jwt(make_gateway, echo_upstream, idp) -> None:
    """The jwt source without `audience` accepts any aud, and the route checks its resource;
    with `audience` it still filters what the source accepts at all."""
    gw = await _gateway(
        make_gateway,
        echo_upstream.url,
        tokens={"sources": [idp.jwt_source(audience=None)]},
    )
    mine = idp.sign(idp.claims(aud=[PAY, "x"], scope="payments"))
    other = idp.sign(idp.claims(aud=ROOT, scope="payments"))
    noaud = idp.sign(idp.claims(aud=None, scope="payments"))
    for token, expected in ((mine, 200), (other, 401), (noaud, 401)):
        status, _, body = await _request(f"{gw.url}/payments", {"Authorization": f"Bearer {token}"})
        assert status == expected, body
    status, _, _ = await _request(f"{gw.url}/root", {"Authorization": f"Bearer {other}"})
    assert status == 200
    status, _, _ = await _request(f"{gw.url}/plain", {"Authorization": f"Bearer {noaud}"})
    assert status == 200

    gw2 = await _gateway(
        make_gateway, echo_upstream.url, tokens={"sources": [idp.jwt_source(audience=ROOT)]}
    )
    status, _, _ = await _request(f"{gw2.url}/root", {"Authorization": f"Bearer {other}"})
    assert status == 200
    status, _, _ = await _request(f"{gw2.url}/payments", {"Authorization": f"Bearer {mine}"})
    assert status == 401  # the source itself refuses an aud it does not accept


async def test_audience_on_shared_cache_entries(make_gateway, echo_upstream, idp, redis_url):
    """An introspection answer cached in Redis keeps its aud and cnf for the other replicas."""
    tokens = {"sources": [idp.introspection_source()]}
    redis = {"url": redis_url, "key_prefix": "gw-aud:"}
    gw1 = await _gateway(make_gateway, echo_upstream.url, tokens=tokens, redis=redis)
    gw2 = await _gateway(make_gateway, echo_upstream.url, tokens=tokens, redis=redis)
    idp.tokens["shared"] = {"active": True, "aud": ROOT, "scope": "payments"}
    auth = {"Authorization": "Bearer shared"}
    assert (await _request(f"{gw1.url}/root", auth))[0] == 200
    assert (await _request(f"{gw2.url}/payments", auth))[0] == 401
    assert (await _request(f"{gw2.url}/root", auth))[0] == 200
    assert idp.introspect_calls == 1


async def test_forward_auth_checks_audience(make_gateway, echo_upstream) -> None:
    gw = await _gateway(
        make_gateway, echo_upstream.url, forward_auth={"host": "127.0.0.1", "port": 0}
    )
    v = gw.gateway.runtime.validator
    mine = await v.issue("code", "app", "alice", "payments", binding=Binding(audience=(PAY,)))
    other = await v.issue("code", "app", "alice", "payments", binding=Binding(audience=(ROOT,)))
    url = f"http://127.0.0.1:{gw.gateway.ports['forward_auth']}/"
    describe = {"X-Original-Method": "GET", "X-Original-URI": "/payments/1"}
    status, headers, _ = await _request(url, describe)
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="gateway", scope="payments", resource_metadata="{PAY_META}"'
    )
    status, _, _ = await _request(url, {**describe, "Authorization": f"Bearer {mine}"})
    assert status == 200
    status, headers, _ = await _request(url, {**describe, "Authorization": f"Bearer {other}"})
    assert status == 401
    assert "not for this resource" in headers["WWW-Authenticate"]
