"""Redis over TLS (`rediss://` with `redis.tls`) against a real TLS-only redis-server started
with the test PKI: the token store works with the test CA, a client certificate
(`tls-auth-clients yes`) and a server_name; a certificate that does not verify is a Redis
outage, so a token only the store could judge is a 503, never a 401."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.authn.validator import TokenValidator
from gateway.config import parse_config
from gateway.errors import ConfigError, StoreUnavailableError, ValidatorUnavailableError
from gateway.redis_conn import connect_redis
from tests.fixtures.servers import base_config


def redis_config(upstream_url: str, url: str, tls: dict[str, Any] | None) -> dict[str, Any]:
    cfg = base_config(upstream_url)
    cfg["routes"] = [{"name": "api", "path_prefix": "/", "upstream": "api"}]
    cfg["redis"] = {"url": url, **({"tls": tls} if tls is not None else {})}
    return cfg


async def call(url: str, token: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.fixture
async def make_store() -> AsyncIterator[Any]:
    """Started TokenValidators with only the Redis token store, from a `redis:` section."""
    made: list[TokenValidator] = []

    async def make(redis: dict[str, Any]) -> TokenValidator:
        doc = {
            "redis": redis,
            "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
            "routes": [{"name": "r", "path_prefix": "/", "upstream": "u"}],
        }
        cfg = parse_config(doc, env={})
        assert cfg.redis is not None
        conn = connect_redis(cfg.redis, backoff_initial=0.01, backoff_max=0.02)
        validator = TokenValidator.from_config(cfg, conn)
        made.append(validator)
        await validator.start()
        return validator

    yield make
    for validator in made:
        await validator.close()


async def test_token_store_over_rediss_with_the_test_ca(
    tls_redis, pki, make_gateway, echo_upstream
):
    """A token minted into the store over TLS is found by a request: 200; an unknown token
    is a 401 (Redis answered)."""
    server = tls_redis()
    gw = await make_gateway(redis_config(echo_upstream.url, server.url, {"ca_file": pki.ca_file}))
    token = await gw.gateway.runtime.validator.issue("authorization_code", "web", "alice", "read")
    status, body = await call(gw.url + "/x", token)
    assert status == 200
    assert body["path"] == "/x"
    status, body = await call(gw.url + "/x", "not-a-known-token")
    assert (status, body["error"]) == (401, "invalid_token")


async def test_wrong_ca_is_an_outage_not_a_401(tls_redis, pki, make_gateway, echo_upstream):
    """A Redis certificate from an unknown CA: Redis is unavailable, the store cannot judge
    the token, the answer is 503 temporarily_unavailable."""
    server = tls_redis()
    cfg = redis_config(echo_upstream.url, server.url, {"ca_file": pki.other_ca_file})
    with capture_logs() as logs:
        gw = await make_gateway(cfg)
        status, body = await call(gw.url + "/x", "some-token")
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert echo_upstream.requests == 0
    down = [e for e in logs if e["event"] == "redis_unavailable"]
    assert len(down) == 1
    assert "certificate verify failed" in down[0]["detail"]
    with pytest.raises(StoreUnavailableError):
        await gw.gateway.runtime.validator.issue("authorization_code", "web")


async def test_system_trust_store_without_tls_block(tls_redis, make_store):
    """rediss:// without `tls`: the system trust store, which lacks the test CA."""
    server = tls_redis()
    v = await make_store({"url": server.url})
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")


async def test_client_certificate_for_redis(tls_redis, pki, make_store):
    """With `tls-auth-clients yes`, our client certificate gets us in; without one, Redis is
    unavailable (503), not a 401."""
    server = tls_redis(auth_clients=True)
    with_cert = await make_store(
        {
            "url": server.url,
            "tls": {
                "ca_file": pki.ca_file,
                "cert_file": pki.client.cert_file,
                "key_file": pki.client.key_file,
            },
        }
    )
    token = await with_cert.issue("implicit", "web", "bob")
    assert (await with_cert.validate(token)).subject == "bob"

    without = await make_store({"url": server.url, "tls": {"ca_file": pki.ca_file}})
    with pytest.raises(ValidatorUnavailableError):
        await without.validate(token)


async def test_server_name_for_redis(tls_redis, pki, make_store):
    """A Redis certificate naming only elsewhere.test: refused at 127.0.0.1, accepted with
    server_name: elsewhere.test."""
    server = tls_redis(pki.wrong_name)
    refused = await make_store({"url": server.url, "tls": {"ca_file": pki.ca_file}})
    with pytest.raises(ValidatorUnavailableError):
        await refused.validate("tok")
    named = await make_store(
        {"url": server.url, "tls": {"ca_file": pki.ca_file, "server_name": "elsewhere.test"}}
    )
    token = await named.issue("authorization_code", "web", "carol")
    assert (await named.validate(token)).subject == "carol"


async def test_redis_insecure_skip_verify_warns(tls_redis, pki, make_store):
    """insecure_skip_verify: any certificate, warned when built and on a kept reload."""
    server = tls_redis(pki.stranger)
    with capture_logs() as logs:
        v = await make_store({"url": server.url, "tls": {"insecure_skip_verify": True}})
        token = await v.issue("authorization_code", "web", "dave")
        assert (await v.validate(token)).subject == "dave"
        v.refresh_tls(warn=True)
    warned = [e["tls"] for e in logs if e["event"] == "tls_verification_disabled"]
    assert warned == ["redis.tls", "redis.tls"]


async def test_redis_ca_file_reloaded(tls_redis, pki, make_store, tmp_path):
    """The CA file is re-read by refresh_tls(): new connections use the new CA."""
    server = tls_redis()
    ca = tmp_path / "redis-ca.pem"
    shutil.copy(pki.other_ca_file, ca)
    v = await make_store({"url": server.url, "tls": {"ca_file": str(ca)}})
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")
    shutil.copy(pki.ca_file, ca)
    with capture_logs() as logs:
        v.refresh_tls()
    assert [e["event"] for e in logs] == ["tls_reloaded"]
    token = await v.issue("authorization_code", "web", "erin")
    assert (await v.validate(token)).subject == "erin"


def test_cluster_mode_passes_redis_py_tls_parameters(pki):
    """In cluster mode redis-py builds the connections: its own ssl_* parameters carry the
    CA, the client certificate, TLS 1.2 at least, and verification on."""
    doc = {
        "redis": {
            "url": "rediss://127.0.0.1:7000/0",
            "cluster": True,
            "tls": {
                "ca_file": pki.ca_file,
                "cert_file": pki.client.cert_file,
                "key_file": pki.client.key_file,
            },
        },
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "r", "path_prefix": "/", "upstream": "u"}],
    }
    cfg = parse_config(doc, env={})
    assert cfg.redis is not None
    conn = connect_redis(cfg.redis)
    kwargs = conn.client.nodes_manager.connection_kwargs  # type: ignore[attr-defined]
    assert kwargs["connection_class"].__name__ == "SSLConnection"
    assert kwargs["ssl_ca_certs"] == pki.ca_file
    assert kwargs["ssl_certfile"] == pki.client.cert_file
    assert kwargs["ssl_keyfile"] == pki.client.key_file
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["ssl_min_version"] == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"url": "redis://r:6379/0", "tls": {"ca_file": "/c"}}, "rediss:// URL only"),
        (
            {"url": "redis+sentinel://s:26379/m", "tls": {"ca_file": "/c"}},
            "rediss:// URL only",
        ),
        (
            {"url": "rediss://r:6379/0", "cluster": True, "tls": {"server_name": "r"}},
            "not supported with `cluster: true`",
        ),
    ],
)
def test_redis_tls_config_errors(redis: dict[str, Any], message: str) -> None:
    doc = {
        "redis": redis,
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "r", "path_prefix": "/", "upstream": "u"}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc, env={})
    assert message in str(err.value)
    assert "redis" in str(err.value)
