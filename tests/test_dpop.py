"""SPEC section 13, DPoP (RFC 9449): every check of section 4.3 with proofs crafted one fault at
a time, the DPoP scheme and its challenges, `sender_constraint`, nonces, replay (in process, and
across two gateway processes on one real redis-server), the session endpoint and forward-auth.
Proofs made by a real client library (oauth4webapi) are in test_oidc_provider.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from gateway.authn.store import Binding
from gateway.bound import canonical_uri, jwk_thumbprint, request_uri
from tests.fixtures.dpop import DpopKey, hs256_proof, unsigned_proof
from tests.fixtures.servers import base_config

ALGS = 'algs="ES256 RS256 PS256 EdDSA Ed25519"'
ROUTES = [
    {"name": "dpop", "path_prefix": "/dpop", "upstream": "api", "sender_constraint": "dpop"},
    {"name": "any", "path_prefix": "/any", "upstream": "api", "sender_constraint": "any",
     "resource": "https://api.example.com/any"},
    {"name": "fwd", "path_prefix": "/fwd", "upstream": "api", "forward_token": True},
    {"name": "open", "path_prefix": "/", "upstream": "api", "scopes": ["read"]},
]  # fmt: skip
RESOURCES = [{"id": "https://api.example.com/any", "authorization_servers": ["https://i/"]}]


async def _request(
    url: str, headers: dict[str, str] | list[tuple[str, str]] | None = None, method: str = "GET"
) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers) as r:
        return r.status, r.headers, await r.read()


class Setup:
    def __init__(self, gw: Any, key: DpopKey, token: str, bearer: str) -> None:
        self.gw = gw
        self.key = key
        self.token = token  # bound to key
        self.bearer = bearer  # unbound

    def url(self, path: str) -> str:
        return f"{self.gw.url}{path}"

    def headers(self, proof: str | None, token: str | None = None, scheme: str = "DPoP"):
        out = [("Authorization", f"{scheme} {token or self.token}")]
        if proof is not None:
            out.append(("DPoP", proof))
        return out

    async def call(self, path: str = "/x", method: str = "GET", **spoil: Any):
        """A request with a proof for it, spoiled by `spoil` (DpopKey.proof keywords)."""
        url = spoil.pop("proof_url", None) or self.url(path)
        proof = self.key.proof(spoil.pop("htm", method), url, self.token, **spoil)
        return await _request(self.url(path), self.headers(proof), method)


async def _setup(make_gateway, echo_upstream, alg: str = "ES256", **overrides: Any) -> Setup:
    cfg = base_config(echo_upstream.url, routes=ROUTES, resources=RESOURCES, **overrides)
    gw = await make_gateway(cfg)
    key = DpopKey.generate(alg)
    v = gw.gateway.runtime.validator
    aud = (RESOURCES[0]["id"],)
    token = await v.issue("code", "app", "alice", "read", binding=Binding(aud, jkt=key.thumbprint))
    bearer = await v.issue("code", "app", "bob", "read", binding=Binding(aud))
    return Setup(gw, key, token, bearer)


def _error(headers: Any, body: bytes) -> tuple[str, str]:
    return json.loads(body)["error"], headers.get("WWW-Authenticate", "")


# -- units --------------------------------------------------------------------------------------


def test_thumbprint_rfc7638_example() -> None:
    """RFC 7638 section 3.1's example key and thumbprint."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR"
        "0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWh"
        "AI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("htu", "request_parts"),
    [
        ("http://127.0.0.1:8080/x", ("http", "127.0.0.1:8080", "/x")),
        ("HTTP://API.Example.COM/x?q=1#f", ("http", "api.example.com", "/x")),
        ("https://api.example.com:443/x", ("https", "api.example.com", "/x")),
        ("http://api.example.com:80/x", ("http", "API.example.com", "/x")),
        ("https://api.example.com/a//b/../c", ("https", "api.example.com", "/a/c")),
        ("http://[::1]:8080/x", ("http", "[::1]:8080", "/x")),
    ],
)
def test_htu_comparison(htu: str, request_parts: tuple[str, str, str]) -> None:
    assert canonical_uri(htu) == request_uri(*request_parts)


@pytest.mark.parametrize(
    ("htu", "request_parts"),
    [
        ("https://api.example.com/x", ("http", "api.example.com", "/x")),
        ("http://api.example.com:8080/x", ("http", "api.example.com", "/x")),
        ("http://api.example.com/x/", ("http", "api.example.com", "/x")),
        ("http://api.example.com/X", ("http", "api.example.com", "/x")),
        ("http://other.example.com/x", ("http", "api.example.com", "/x")),
        ("/x", ("http", "api.example.com", "/x")),
    ],
)
def test_htu_mismatch(htu: str, request_parts: tuple[str, str, str]) -> None:
    assert canonical_uri(htu) != request_uri(*request_parts)


# -- the happy path, every algorithm ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA", "Ed25519"])
async def test_valid_proof(make_gateway, echo_upstream, alg: str) -> None:
    s = await _setup(make_gateway, echo_upstream, alg)
    status, _, body = await s.call("/dpop/items?x=1", "POST")
    assert status == 200, body
    sent = {k.lower(): v for k, v in echo_upstream.last["headers"]}
    assert sent["x-auth-binding"] == "dpop"
    assert sent["x-auth-subject"] == "alice"
    assert "dpop" not in sent and "authorization" not in sent  # credentials stay here
    # the next request, with a fresh proof, answered from the cache (sync path)
    status, _, _ = await s.call("/dpop/items")
    assert status == 200


async def test_client_copies_of_x_auth_binding_removed(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    headers = [
        ("Authorization", f"Bearer {s.bearer}"),
        ("X-Auth-Binding", "dpop"),
        ("x_auth_binding", "mtls"),
        ("X-Auth_Binding", "mtls"),
    ]
    status, _, _ = await _request(s.url("/x"), headers)
    assert status == 200
    names = [k.lower().replace("_", "-") for k, _ in echo_upstream.last["headers"]]
    assert "x-auth-binding" not in names


async def test_forward_token_keeps_dpop_credentials(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    status, _, _ = await s.call("/fwd")
    assert status == 200
    sent = {k.lower(): v for k, v in echo_upstream.last["headers"]}
    assert sent["authorization"] == f"DPoP {s.token}"
    assert sent["dpop"].count(".") == 2


# -- every refusal ------------------------------------------------------------------------------

SPOILED = {
    "typ": {"header": {"typ": "JWT"}},
    "no_typ": {"drop": ("typ",)},
    "alg_not_allowed": {"header": {"alg": "ES384"}},
    "jwk_private": {"jwk": "private"},
    "jwk_missing": {"drop": ("jwk",)},
    "jwk_other_kty": {"jwk": "rsa"},
    "signature": {"bad_signature": True},
    "htm": {"htm": "POST"},
    "htu_path": {"proof_url": "http://{host}/other"},
    "htu_host": {"proof_url": "http://evil.example:{port}/x"},
    "htu_scheme": {"proof_url": "https://{host}/x"},
    "iat_old": {"iat_offset": -120.0},  # max_age is 60 s
    "iat_future": {"iat_offset": 30.0},  # 5 s ahead are allowed
    "iat_string": {"claims": {"iat": "now"}},
    "no_jti": {"drop": ("jti",)},
    "ath_wrong": {"claims": {"ath": "x" * 43}},
    "ath_missing": {"drop": ("ath",)},
    "not_a_jwt": {},
}


@pytest.mark.parametrize("fault", sorted(SPOILED))
async def test_bad_proofs(make_gateway, echo_upstream, fault: str) -> None:
    s = await _setup(make_gateway, echo_upstream)
    spoil = dict(SPOILED[fault])
    host = f"127.0.0.1:{s.gw.port}"
    if "iat_offset" in spoil:  # relative to now, when the test runs
        spoil["iat"] = time.time() + spoil.pop("iat_offset")
    if "proof_url" in spoil:
        spoil["proof_url"] = spoil["proof_url"].format(host=host, port=s.gw.port)
    if spoil.get("jwk") == "private":
        spoil["jwk"] = s.key.private_jwk
    elif spoil.get("jwk") == "rsa":
        spoil["jwk"] = DpopKey.generate("RS256").public_jwk
    if fault == "not_a_jwt":
        status, headers, body = await _request(s.url("/x"), s.headers("a.b"))
    else:
        status, headers, body = await s.call("/x", **spoil)
    assert status == 401
    assert _error(headers, body) == (
        "invalid_dpop_proof",
        f'DPoP realm="gateway", error="invalid_dpop_proof", error_description="The DPoP '
        f'proof is invalid.", {ALGS}',
    )
    assert echo_upstream.requests == 0


async def test_alg_none_and_hmac_refused(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    url = s.url("/x")
    for proof in (
        unsigned_proof("GET", url, s.token, s.key.public_jwk),
        hs256_proof("GET", url, s.token, s.key.public_jwk),
    ):
        status, _headers, body = await _request(url, s.headers(proof))
        assert (status, json.loads(body)["error"]) == (401, "invalid_dpop_proof")


async def test_proof_header_count(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    url = s.url("/x")
    status, headers, body = await _request(url, s.headers(None))
    assert (status, _error(headers, body)[0]) == (401, "invalid_dpop_proof")
    p1, p2 = s.key.proof("GET", url, s.token), s.key.proof("GET", url, s.token)
    status, headers, body = await _request(url, [*s.headers(p1), ("DPoP", p2)])
    assert (status, _error(headers, body)[0]) == (401, "invalid_dpop_proof")


async def test_replay_refused_in_process(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    url = s.url("/x")
    proof = s.key.proof("GET", url, s.token)
    assert (await _request(url, s.headers(proof)))[0] == 200
    status, headers, body = await _request(url, s.headers(proof))
    assert (status, _error(headers, body)[0]) == (401, "invalid_dpop_proof")


async def test_key_mismatch(make_gateway, echo_upstream) -> None:
    """A valid proof by another key: the token is not bound to it (invalid_token, as
    oidc-provider answers)."""
    s = await _setup(make_gateway, echo_upstream)
    other = DpopKey.generate("ES256")
    proof = other.proof("GET", s.url("/x"), s.token)
    status, headers, body = await _request(s.url("/x"), s.headers(proof))
    assert status == 401
    error, challenge = _error(headers, body)
    assert error == "invalid_token"
    assert challenge.startswith('DPoP realm="gateway", error="invalid_token"')
    assert json.loads(body)["error_description"] == (
        "The access token is not bound to the key or certificate presented."
    )


async def test_bound_token_as_bearer_refused(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    proof = s.key.proof("GET", s.url("/x"), s.token)
    for headers in (s.headers(None, scheme="Bearer"), s.headers(proof, scheme="Bearer")):
        status, answer_headers, body = await _request(s.url("/x"), headers)
        assert (status, _error(answer_headers, body)[0]) == (401, "invalid_token")
    # its cached answer does not help either
    status, _, _ = await s.call("/x")
    assert status == 200
    status, _, _ = await _request(s.url("/x"), s.headers(None, scheme="Bearer"))
    assert status == 401


async def test_unbound_token_with_dpop_scheme_refused(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    proof = s.key.proof("GET", s.url("/x"), s.bearer)
    status, headers, body = await _request(s.url("/x"), s.headers(proof, token=s.bearer))
    assert status == 401
    error, challenge = _error(headers, body)
    assert error == "invalid_token"
    assert challenge.startswith("DPoP ") and ALGS in challenge
    # the same token as Bearer is fine on a route without a sender constraint
    assert (await _request(s.url("/x"), s.headers(None, s.bearer, "Bearer")))[0] == 200


async def test_sender_constraint_dpop(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    status, headers, body = await _request(s.url("/dpop"))
    assert status == 401
    assert headers.getall("WWW-Authenticate") == [f'DPoP realm="gateway", {ALGS}']
    status, headers, body = await _request(s.url("/dpop"), s.headers(None, s.bearer, "Bearer"))
    assert status == 401
    assert json.loads(body) == {
        "error": "invalid_token",
        "error_description": "This resource requires a sender-constrained access token.",
    }
    assert headers.getall("WWW-Authenticate") == [
        'DPoP realm="gateway", error="invalid_token", error_description="This resource '
        f'requires a sender-constrained access token.", {ALGS}'
    ]


async def test_sender_constraint_any(make_gateway, echo_upstream) -> None:
    """Bearer first (MCP clients read only a leading Bearer challenge), then DPoP; both with
    resource_metadata; the error in the challenge of the scheme the client used."""
    s = await _setup(make_gateway, echo_upstream)
    meta = 'resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/any"'
    status, headers, _ = await _request(s.url("/any"))
    assert status == 401
    assert headers.getall("WWW-Authenticate") == [
        f'Bearer realm="gateway", {meta}',
        f'DPoP realm="gateway", {ALGS}, {meta}',
    ]
    status, headers, _ = await _request(s.url("/any"), s.headers(None, s.bearer, "Bearer"))
    assert status == 401
    first, second = headers.getall("WWW-Authenticate")
    assert first.startswith('Bearer realm="gateway", error="invalid_token"') and meta in first
    assert second == f'DPoP realm="gateway", {ALGS}, {meta}'
    status, headers, _ = await s.call("/any", bad_signature=True)
    first, second = headers.getall("WWW-Authenticate")
    assert first == f'Bearer realm="gateway", {meta}'
    assert second.startswith('DPoP realm="gateway", error="invalid_dpop_proof"') and meta in second
    assert (await s.call("/any"))[0] == 200


async def test_trusted_forwarded_proto_and_host(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream, trusted_proxies=["127.0.0.1"])
    forwarded = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "API.example.com")]
    proof = s.key.proof("GET", "https://api.example.com/x", s.token)
    status, _, body = await _request(s.url("/x"), [*s.headers(proof), *forwarded])
    assert status == 200, body
    proof = s.key.proof("GET", s.url("/x"), s.token)  # what the gateway's own listener saw
    status, _, _ = await _request(s.url("/x"), [*s.headers(proof), *forwarded])
    assert status == 401


async def test_untrusted_forwarded_headers_ignored(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    forwarded = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example.com")]
    proof = s.key.proof("GET", "https://api.example.com/x", s.token)
    assert (await _request(s.url("/x"), [*s.headers(proof), *forwarded]))[0] == 401
    proof = s.key.proof("GET", s.url("/x"), s.token)
    assert (await _request(s.url("/x"), [*s.headers(proof), *forwarded]))[0] == 200


async def test_nonce(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream, tokens={"dpop": {"nonce": True}})
    status, headers, body = await s.call("/x")
    assert status == 401
    assert _error(headers, body) == (
        "use_dpop_nonce",
        'DPoP realm="gateway", error="use_dpop_nonce", error_description="The resource server '
        f'requires a nonce in the DPoP proof.", {ALGS}',
    )
    nonce = headers["DPoP-Nonce"]
    status, headers, _ = await s.call("/x", nonce=nonce)
    assert status == 200
    assert headers["DPoP-Nonce"] == nonce  # every answer to a DPoP request carries it
    status, headers, _ = await s.call("/x", nonce="A" * 32)
    assert status == 401 and "use_dpop_nonce" in headers["WWW-Authenticate"]
    # answers to requests without DPoP carry none
    _, headers, _ = await _request(s.url("/x"), s.headers(None, s.bearer, "Bearer"))
    assert "DPoP-Nonce" not in headers


async def test_nonce_secret_shared_by_replicas(make_gateway, echo_upstream, tmp_path) -> None:
    secret = tmp_path / "nonce"
    secret.write_text("a shared secret\n")
    tokens = {"dpop": {"nonce": True, "nonce_secret_file": str(secret)}}
    s1 = await _setup(make_gateway, echo_upstream, tokens=tokens)
    cfg = base_config(echo_upstream.url, routes=ROUTES, resources=RESOURCES, tokens=tokens)
    gw2 = await make_gateway(cfg)
    token2 = await gw2.gateway.runtime.validator.issue(
        "code", "app", "alice", "read", binding=Binding(jkt=s1.key.thumbprint)
    )
    _, headers, _ = await s1.call("/x")
    nonce = headers["DPoP-Nonce"]
    proof = s1.key.proof("GET", f"{gw2.url}/x", token2, nonce=nonce)
    status, _, _ = await _request(
        f"{gw2.url}/x", [("Authorization", f"DPoP {token2}"), ("DPoP", proof)]
    )
    assert status == 200


async def test_session_endpoint_checks_dpop(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream)
    url = s.url("/oauth20/access-token")
    status, _, body = await _request(url, s.headers(s.key.proof("GET", url, s.token)))
    assert status == 200 and json.loads(body)["sub"] == "alice"
    status, _, _ = await _request(url, s.headers(None, scheme="Bearer"))
    assert status == 401
    status, _, _ = await _request(url, s.headers(s.key.proof("DELETE", url, s.token)))
    assert status == 401  # htm GET proof for... a DELETE below; this one is a GET request
    status, _, body = await _request(
        url, s.headers(s.key.proof("DELETE", url, s.token)), method="DELETE"
    )
    assert status == 200 and json.loads(body) == {"revoked": True}


async def test_forward_auth_htu_from_description(make_gateway, echo_upstream) -> None:
    s = await _setup(make_gateway, echo_upstream, forward_auth={"host": "127.0.0.1", "port": 0})
    url = f"http://127.0.0.1:{s.gw.gateway.ports['forward_auth']}/auth"
    described = [
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example.com"),
        ("X-Forwarded-Uri", "/dpop/pay?amount=1"),
    ]
    proof = s.key.proof("POST", "https://api.example.com/dpop/pay", s.token)
    status, headers, body = await _request(url, [*s.headers(proof), *described])
    assert status == 200, body
    assert headers["X-Auth-Binding"] == "dpop"
    proof = s.key.proof("GET", url, s.token)  # the decision request itself: not what counts
    status, headers, _ = await _request(url, [*s.headers(proof), *described])
    assert status == 401 and "invalid_dpop_proof" in headers["WWW-Authenticate"]
    # nginx style: no X-Forwarded-Proto (http) nor -Host (the decision request's Host)
    nginx = [("X-Original-Method", "GET"), ("X-Original-URI", "/dpop/x")]
    host = f"127.0.0.1:{s.gw.gateway.ports['forward_auth']}"
    proof = s.key.proof("GET", f"http://{host}/dpop/x", s.token)
    status, _, body = await _request(url, [*s.headers(proof), *nginx])
    assert status == 200, body


async def test_replay_across_replicas(gateway_process, echo_upstream, redis_url) -> None:
    """Two real gateway processes on one redis-server: a proof accepted by one is refused by
    the other (SET NX under the key prefix)."""
    routes = [{"name": "all", "path_prefix": "/", "upstream": "api"}]
    redis = {"url": redis_url, "key_prefix": "gw-dpop:"}
    p1 = await gateway_process(echo_upstream.url, routes=routes, redis=redis)
    p2 = await gateway_process(echo_upstream.url, routes=routes, redis=redis)
    key = DpopKey.generate("ES256")
    token = await _issue_in_redis(p1, key.thumbprint)
    for first, second in ((p1, p2), (p2, p1)):
        proof = key.proof("GET", f"{first.url}/x", token)
        status, _, body = await _request(
            f"{first.url}/x", [("Authorization", f"DPoP {token}"), ("DPoP", proof)]
        )
        assert status == 200, body
        # the same proof at the other replica: same htu needed, so send it to the same URL
        # through the second process with the first one's Host
        status, _headers, body = await _request(
            f"{second.url}/x",
            [
                ("Authorization", f"DPoP {token}"),
                ("DPoP", proof),
                ("Host", f"127.0.0.1:{first.port}"),
            ],
        )
        assert status == 401, body
        assert json.loads(body)["error"] == "invalid_dpop_proof"
    # a fresh proof is fine at both
    for p in (p1, p2):
        proof = key.proof("GET", f"{p.url}/x", token)
        assert (
            await _request(f"{p.url}/x", [("Authorization", f"DPoP {token}"), ("DPoP", proof)])
        )[0] == 200


async def _issue_in_redis(proc: Any, jkt: str) -> str:
    """`gateway token issue --dpop-jkt` against the processes' config."""
    out = await asyncio.create_subprocess_exec(
        *_gateway_cmd(), "token", "issue", "--config", str(proc.path), "--grant", "code",
        "--client-id", "app", "--subject", "alice", "--dpop-jkt", jkt,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await out.communicate()
    assert out.returncode == 0, stderr
    return stdout.decode().strip()


def _gateway_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "gateway"]


async def test_iat_window_edges(make_gateway, echo_upstream) -> None:
    """`iat` up to max_age in the past and 5 s in the future is accepted."""
    s = await _setup(make_gateway, echo_upstream)
    for offset in (-55.0, 4.0):
        status, _, body = await s.call("/x", iat=time.time() + offset)
        assert status == 200, (offset, body)
