"""Identity providers over TLS (SPEC section 11): introspection, revocation and JWKS at an
HTTPS authorization server with a certificate from the test PKI. A trusted IdP answers as over
HTTP; an untrusted one is a source outage (503 temporarily_unavailable, reason idp_tls), never
a 401; RFC 8705 tls_client_auth authenticates the gateway by its client certificate."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.config import parse_config
from gateway.errors import ConfigError, InvalidTokenError, ValidatorUnavailableError
from tests.fixtures.idp import CLIENT_SECRET
from tests.fixtures.servers import base_config

CLIENT_SUBJECT = "organizationName=gateway tests,commonName=client.test"


def token_config(upstream_url: str, source: dict[str, Any]) -> dict[str, Any]:
    cfg = base_config(upstream_url)
    cfg["routes"] = [{"name": "api", "path_prefix": "/", "upstream": "api"}]
    cfg["tokens"] = {"sources": [source]}
    return cfg


async def call(url: str, token: str) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        body = await r.json(content_type=None)
        return r.status, body, r.headers


async def test_introspection_over_tls_with_the_test_ca(make_validator, tls_idp, pki):
    """An https:// introspection endpoint verified against `tls.ca_file` answers as usual."""
    tls_idp.tokens["tok"] = tls_idp.claims(sub="alice")
    v = await make_validator([tls_idp.introspection_source(tls={"ca_file": pki.ca_file})])
    info = await v.validate("tok")
    assert info.subject == "alice"
    with pytest.raises(InvalidTokenError):
        await v.validate("unknown")  # a real "inactive" answer is still a 401
    assert tls_idp.introspect_calls == 2
    assert tls_idp.client_subjects == [None, None]  # no client certificate configured


@pytest.mark.parametrize("ca", ["other", "system"])
async def test_untrusted_introspection_endpoint_is_an_outage(make_validator, tls_idp, pki, ca):
    """An IdP certificate that does not verify (an unrelated CA; the system store, which
    lacks the test CA) makes the source unavailable (idp_tls), logged once, never a 401."""
    tls_idp.tokens["tok"] = tls_idp.claims()
    tls = {"ca_file": pki.other_ca_file} if ca == "other" else None
    source = tls_idp.introspection_source(**({"tls": tls} if tls else {}))
    v = await make_validator([source])
    with capture_logs() as logs:
        for token in ("tok", "other"):
            with pytest.raises(ValidatorUnavailableError) as err:
                await v.validate(token)
            assert err.value.reason == "idp_tls"
    assert tls_idp.introspect_calls == 0
    failed = [e for e in logs if e["event"] == "idp_tls_failed"]
    assert len(failed) == 1
    assert "unable to get local issuer certificate" in failed[0]["detail"]
    assert failed[0]["tls"] == "tokens.sources[0].tls"


async def test_untrusted_idp_answers_503_through_the_gateway(
    make_gateway, echo_upstream, tls_idp, pki
):
    """Through the gateway: 503 temporarily_unavailable with Retry-After, never a 401."""
    tls_idp.tokens["tok"] = tls_idp.claims()
    source = tls_idp.introspection_source(tls={"ca_file": pki.other_ca_file})
    gw = await make_gateway(token_config(echo_upstream.url, source))
    status, body, headers = await call(gw.url + "/x", "tok")
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert headers["Retry-After"] == "5"
    assert echo_upstream.requests == 0

    good = await make_gateway(
        token_config(echo_upstream.url, {**source, "tls": {"ca_file": pki.ca_file}})
    )
    status, _, _ = await call(good.url + "/x", "tok")
    assert status == 200
    assert echo_upstream.requests == 1


async def test_handshake_failure_at_the_idp_is_an_outage(make_validator, pki):
    """A plain-HTTP server at an https:// introspection URL: idp_tls, not a 401."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        source = {
            "type": "introspection",
            "url": f"https://127.0.0.1:{port}/introspect",
            "client_id": "gateway",
            "client_secret": "x",
            "tls": {"ca_file": pki.ca_file},
        }
        v = await make_validator([source])
        with pytest.raises(ValidatorUnavailableError) as err:
            await v.validate("tok")
        assert err.value.reason == "idp_tls"
    finally:
        server.close()


async def test_jwks_over_tls(make_validator, tls_idp, pki):
    """A JWKS fetched over HTTPS with the test CA verifies tokens; with an untrusted
    certificate, a JWT cannot be judged: 503 (idp_tls), never a 401."""
    token = tls_idp.sign(tls_idp.claims(sub="bob"))
    good = await make_validator([tls_idp.jwt_source(tls={"ca_file": pki.ca_file})])
    assert (await good.validate(token)).subject == "bob"
    assert tls_idp.jwks_fetches == 1

    bad = await make_validator([tls_idp.jwt_source(tls={"ca_file": pki.other_ca_file})])
    with pytest.raises(ValidatorUnavailableError) as err:
        await bad.validate(token)
    assert err.value.reason == "idp_tls"
    assert tls_idp.jwks_fetches == 1


async def test_jwks_through_the_gateway_503_when_untrusted_200_when_trusted(
    make_gateway, echo_upstream, tls_idp, pki
):
    """A JWT whose issuer's JWKS cannot be fetched over a trusted connection: 503; with the
    right CA: 200."""
    token = tls_idp.sign(tls_idp.claims())
    source = tls_idp.jwt_source(tls={"ca_file": pki.other_ca_file})
    gw = await make_gateway(token_config(echo_upstream.url, source))
    status, body, _ = await call(gw.url + "/x", token)
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert echo_upstream.requests == 0

    good = await make_gateway(
        token_config(echo_upstream.url, {**source, "tls": {"ca_file": pki.ca_file}})
    )
    status, _, _ = await call(good.url + "/x", token)
    assert status == 200
    assert echo_upstream.requests == 1


async def test_tls_client_auth_authenticates_with_the_client_certificate(
    make_validator, tls_idp, pki
):
    """RFC 8705 tls_client_auth: the client certificate, client_id in the form, no secret."""
    tls_idp.tls_client_auth = True
    tls_idp.tokens["tok"] = tls_idp.claims(sub="carol")
    source = tls_idp.introspection_source(
        auth_method="tls_client_auth",
        tls={
            "ca_file": pki.ca_file,
            "cert_file": pki.client.cert_file,
            "key_file": pki.client.key_file,
        },
    )
    del source["client_secret"]
    v = await make_validator([source])
    assert (await v.validate("tok")).subject == "carol"
    assert tls_idp.auth_methods == ["tls_client_auth"]
    assert tls_idp.client_subjects == [CLIENT_SUBJECT]
    assert tls_idp.auth_failures == 0


async def test_client_certificate_with_a_secret_and_revocation_over_tls(
    make_validator, tls_idp, pki
):
    """A client certificate may go along with client_secret_basic; RFC 7009 revocation at an
    https:// revocation_url uses the same TLS settings."""
    tls_idp.tokens["tok"] = tls_idp.claims()
    source = tls_idp.introspection_source(
        revocation_url=f"{tls_idp.url}/revoke",
        tls={
            "ca_file": pki.ca_file,
            "cert_file": pki.client.cert_file,
            "key_file": pki.client.key_file,
        },
    )
    v = await make_validator([source])
    await v.validate("tok")
    await v.revoke("tok")
    for _ in range(50):
        if tls_idp.revoked_tokens:
            break
        await asyncio.sleep(0.05)
    assert tls_idp.revoked_tokens == ["tok"]
    assert tls_idp.auth_methods == ["basic", "basic"]
    assert tls_idp.client_subjects == [CLIENT_SUBJECT, CLIENT_SUBJECT]


async def test_idp_ca_file_reloaded(make_validator, tls_idp, pki, tmp_path):
    """The source's CA file is re-read by refresh_tls() (the gateway's watcher and SIGHUP):
    refused with the wrong CA, trusted once the right one is in place."""
    tls_idp.tokens["tok"] = tls_idp.claims()
    ca = tmp_path / "idp-ca.pem"
    shutil.copy(pki.other_ca_file, ca)
    v = await make_validator([tls_idp.introspection_source(tls={"ca_file": str(ca)})])
    with pytest.raises(ValidatorUnavailableError):
        await v.validate("tok")
    shutil.copy(pki.ca_file, ca)
    with capture_logs() as logs:
        v.refresh_tls()
    assert [e["event"] for e in logs] == ["tls_reloaded"]
    assert (await v.validate("tok")).client_id == "web-app"


async def test_idp_insecure_skip_verify_warns(make_validator, tls_idp, pki):
    """insecure_skip_verify at an IdP: any certificate, and a warning when built and again on
    a reload that keeps the validator."""
    tls_idp.tokens["tok"] = tls_idp.claims()
    with capture_logs() as logs:
        v = await make_validator([tls_idp.introspection_source(tls={"insecure_skip_verify": True})])
        await v.validate("tok")
        v.refresh_tls(warn=True)
    warned = [e["tls"] for e in logs if e["event"] == "tls_verification_disabled"]
    assert warned == ["tokens.sources[0].tls"] * 2


def _tokens(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "tokens": {"sources": [source]},
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "r", "path_prefix": "/", "upstream": "u"}],
    }


INTRO = {"type": "introspection", "url": "https://idp/i", "client_id": "gw"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {**INTRO, "url": "http://idp/i", "client_secret": "s", "tls": {"ca_file": "/c"}},
            "`tls` applies to https:// URLs only",
        ),
        (INTRO, "`client_secret_basic` needs `client_secret`"),
        (
            {**INTRO, "auth_method": "tls_client_auth", "tls": {"ca_file": "/c"}},
            "`tls_client_auth` needs `tls.cert_file`",
        ),
        (
            {
                **INTRO,
                "auth_method": "tls_client_auth",
                "client_secret": "s",
                "tls": {"cert_file": "/c", "key_file": "/k"},
            },
            "sends no `client_secret`",
        ),
        (
            {
                "type": "jwt",
                "jwks_url": "http://idp/jwks",
                "issuer": "i",
                "audience": "a",
                "tls": {"ca_file": "/c"},
            },
            "`tls` applies to https:// URLs only",
        ),
    ],
)
def test_source_tls_config_errors(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_tokens(source), env={})
    assert message in str(err.value)
    assert "tokens.sources[0]" in str(err.value)


def test_revocation_url_alone_may_be_https() -> None:
    """`tls` is accepted when any of the source's URLs is https://."""
    parse_config(
        _tokens(
            {
                **INTRO,
                "url": "http://idp/i",
                "client_secret": CLIENT_SECRET,
                "revocation_url": "https://idp/r",
                "tls": {"ca_file": "/c"},
            }
        ),
        env={},
    )
