"""Against real implementations: oidc-provider (npm) issues DPoP-bound, audience-restricted JWT
access tokens (RFC 9068, RFC 8707 resource indicators, client_credentials) and opaque ones it
introspects (RFC 7662, `cnf` and `aud` in the answer); oauth4webapi (npm) discovers the
gateway's RFC 9728 metadata, makes the DPoP proofs and parses the gateway's challenges; the MCP
TypeScript SDK discovers the authorization server from the `resource_metadata` challenge.

The node packages are installed from tests/fixtures/oidc/package-lock.json with `npm ci` into
that folder (once; `make test` does it too). Without node/npm the tests are skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.fixtures.servers import base_config, free_port

HERE = Path(__file__).parent / "fixtures" / "oidc"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm"
)


def _npm_ci() -> None:
    """Install the pinned packages once (a stamp records the lock file it installed)."""
    stamp = HERE / "node_modules" / ".installed-lock"
    lock = (HERE / "package-lock.json").read_text()
    if stamp.exists() and stamp.read_text() == lock:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=HERE, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    stamp.write_text(lock)


class Provider:
    def __init__(self, issuer: str, proc: subprocess.Popen[bytes]) -> None:
        self.issuer = issuer
        self.proc = proc


async def _start_provider(resources: list[str], opaque: list[str]) -> Provider:
    port = free_port()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key))
    jwk.update(kid="test-es256", alg="ES256", use="sig")
    env = {
        **os.environ,
        "PORT": str(port),
        "RESOURCES": ",".join(resources),
        "OPAQUE_RESOURCES": ",".join(opaque),
        "SIGNING_JWK": json.dumps(jwk),
    }
    proc = subprocess.Popen(
        ["node", "provider.mjs"], cwd=HERE, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    if not line:
        raise AssertionError("oidc-provider did not start")
    return Provider(json.loads(line)["issuer"], proc)


@pytest.fixture
async def provider_factory() -> AsyncIterator[Any]:
    await asyncio.to_thread(_npm_ci)
    started: list[Provider] = []

    async def start(resources: list[str], opaque: list[str] | None = None) -> Provider:
        p = await _start_provider(resources, opaque or [])
        started.append(p)
        return p

    yield start
    for p in started:
        p.proc.terminate()
        p.proc.wait(10)
        if p.proc.stdout is not None:
            p.proc.stdout.close()


async def _client(mode: str, **env: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node", "client.mjs", mode, cwd=HERE, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, (result, err.decode())
    return result


def _gateway_config(upstream: str, port: int, issuer: str, **tokens: Any) -> dict[str, Any]:
    api = f"http://127.0.0.1:{port}/api"
    other = f"http://127.0.0.1:{port}/other"
    cfg = base_config(
        upstream,
        resources=[
            {"id": api, "authorization_servers": [issuer], "scopes_supported": ["payments"]},
            {"id": other, "authorization_servers": [issuer]},
        ],
        routes=[
            {
                "name": "api",
                "path_prefix": "/api",
                "upstream": "api",
                "resource": api,
                "sender_constraint": "dpop",
                "scopes": ["payments"],
            },
            {"name": "other", "path_prefix": "/other", "upstream": "api", "resource": other},
        ],
        tokens={
            "sources": [
                {
                    "type": "jwt",
                    "jwks_url": f"{issuer}/jwks",
                    "issuer": issuer,
                    "algorithms": ["ES256"],
                    "require_typ": True,
                },
                {
                    "type": "introspection",
                    "url": f"{issuer}/token/introspection",
                    "client_id": "gateway",
                    "client_secret": "gateway-secret",
                },
            ],
            **tokens,
        },
    )
    cfg["listen"]["port"] = port
    return cfg


@pytest.mark.parametrize("alg", ["ES256", "RS256", "Ed25519"])
async def test_dpop_bound_jwt_from_oidc_provider(
    make_gateway, echo_upstream, provider_factory, alg: str
) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    provider = await provider_factory([api, f"http://127.0.0.1:{port}/other"])
    gw = await make_gateway(_gateway_config(echo_upstream.url, port, provider.issuer))
    result = await _client("dpop", RESOURCE=api, URL=api, ALG=alg, OTHER_URL=f"{gw.url}/other/x")
    meta = result["resource_metadata"]
    assert meta["resource"] == api
    assert meta["authorization_servers"] == [provider.issuer]
    assert meta["dpop_bound_access_tokens_required"] is True
    assert result["token_type"].lower() == "dpop"
    assert result["claims"]["aud"] == api
    assert "jkt" in result["claims"]["cnf"]
    for step in ("get", "post", "again"):
        assert result[step]["status"] == 200, result[step]
        assert result[step]["body"]["path"].startswith("/api/items")
    sent = dict((k.lower(), v) for k, v in echo_upstream.last["headers"])
    assert sent["x-auth-binding"] == "dpop"
    assert "dpop" not in sent and "authorization" not in sent
    # the same token as Bearer, and with a proof of another key: refused, challenges parsed
    for step in ("as_bearer", "other_key"):
        assert result[step]["status"] == 401
        (challenge,) = result[step]["challenges"]
        assert challenge["scheme"] == "dpop"
        assert challenge["parameters"]["error"] == "invalid_token"
        assert challenge["parameters"]["algs"] == "ES256 RS256 PS256 EdDSA Ed25519"
        assert challenge["parameters"]["resource_metadata"] == (
            f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/api"
        )
    # a token for /api is not for /other
    assert result["other_resource"]["status"] == 401
    bearer, dpop = result["other_resource"]["challenges"]
    assert bearer["scheme"] == "bearer" and "error" not in bearer["parameters"]
    assert "not for this resource" in dpop["parameters"]["error_description"]


async def test_nonce_with_oauth4webapi(make_gateway, echo_upstream, provider_factory) -> None:
    """use_dpop_nonce: the client library retries with the DPoP-Nonce the gateway sent."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    provider = await provider_factory([api])
    cfg = _gateway_config(echo_upstream.url, port, provider.issuer, dpop={"nonce": True})
    await make_gateway(cfg)
    result = await _client("dpop", RESOURCE=api, URL=api)
    assert result["get"]["status"] == 200
    assert result["get"]["nonce"]
    assert result["post"]["status"] == 200


async def test_dpop_bound_opaque_token_introspected(
    make_gateway, echo_upstream, provider_factory
) -> None:
    """An opaque DPoP-bound token: `cnf.jkt` and `aud` come from oidc-provider's introspection."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    provider = await provider_factory([], opaque=[api])
    await make_gateway(_gateway_config(echo_upstream.url, port, provider.issuer))
    result = await _client("dpop", RESOURCE=api, URL=api)
    assert result["token_type"].lower() == "dpop"
    assert result["get"]["status"] == 200, result
    assert result["as_bearer"]["status"] == 401
    assert result["other_key"]["status"] == 401


async def test_mcp_sdk_discovers_from_the_challenge(
    make_gateway, echo_upstream, provider_factory
) -> None:
    """The MCP TypeScript SDK: 401 -> resource_metadata -> RFC 9728 document -> the
    authorization server -> a token for the resource (RFC 8707) -> 200."""
    port = free_port()
    mcp = f"http://127.0.0.1:{port}/mcp"
    provider = await provider_factory([mcp])
    cfg = base_config(
        echo_upstream.url,
        resources=[{"id": mcp, "authorization_servers": [provider.issuer]}],
        routes=[
            {
                "name": "mcp",
                "path_prefix": "/mcp",
                "upstream": "api",
                "resource": mcp,
                "scopes": ["payments"],
            }
        ],
        tokens={
            "sources": [
                {
                    "type": "jwt",
                    "jwks_url": f"{provider.issuer}/jwks",
                    "issuer": provider.issuer,
                    "algorithms": ["ES256"],
                }
            ]
        },
    )
    cfg["listen"]["port"] = port
    await make_gateway(cfg)
    result = await _client("mcp", SERVER_URL=mcp, ISSUER=provider.issuer)
    assert result["first"]["status"] == 401
    assert result["challenge"] == {
        "resourceMetadataUrl": f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp",
        "scope": "payments",
    }
    assert result["auth"] == "AUTHORIZED"
    assert result["claims"]["aud"] == mcp
    assert result["again"]["status"] == 200
