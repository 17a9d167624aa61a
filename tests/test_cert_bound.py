"""SPEC section 13, certificate-bound tokens (RFC 8705): `cnf["x5t#S256"]` against the client
certificate a trusted front proxy passes in `tokens.mtls.cert_header` (Envoy's
X-Forwarded-Client-Cert, nginx's `$ssl_client_escaped_cert`), or the one verified on a TLS
listener (`listen.tls`, see test_tls_listener_peer_certificate)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.authn.store import Binding
from gateway.bound import forwarded_certificate
from gateway.config.models import ListenConfig
from tests.fixtures.servers import base_config

ROUTES = [
    {"name": "mtls", "path_prefix": "/mtls", "upstream": "api", "sender_constraint": "mtls"},
    {"name": "open", "path_prefix": "/", "upstream": "api"},
]


def make_cert(name: str = "client") -> tuple[bytes, Any, x509.Certificate]:
    """A self-signed certificate: (DER, private key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER), key, cert


def x5t(der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def xfcc(der: bytes, subject: str = "CN=client") -> str:
    return f'Hash={hashlib.sha256(der).hexdigest()};Subject="{subject}"'


async def _request(url: str, headers: list[tuple[str, str]]) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, r.headers, await r.read()


async def _setup(make_gateway, echo_upstream, **overrides: Any):
    cfg = base_config(echo_upstream.url, routes=ROUTES, **overrides)
    gw = await make_gateway(cfg)
    der, _, _ = make_cert()
    v = gw.gateway.runtime.validator
    bound = await v.issue("code", "app", "alice", "", binding=Binding(x5t=x5t(der)))
    bearer = await v.issue("code", "app", "bob", "")
    return gw, der, bound, bearer


def test_forwarded_certificate_formats() -> None:
    der, _, cert = make_cert()
    other, _, _ = make_cert("other")
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert forwarded_certificate(xfcc(der).encode()) == x5t(der)
    # the last element is the one the nearest proxy added
    chain = f"{xfcc(other)},By=spiffe://a;{xfcc(der, 'CN=a,O=b')}"
    assert forwarded_certificate(chain.encode()) == x5t(der)
    assert forwarded_certificate(f'Cert="{quote(pem)}"'.encode()) == x5t(der)
    assert forwarded_certificate(quote(pem).encode()) == x5t(der)  # nginx escaped PEM
    assert forwarded_certificate(b"Hash=zz") is None
    assert forwarded_certificate(b"") is None
    assert forwarded_certificate(b"Subject=x") is None


async def test_certificate_from_trusted_proxy(make_gateway, echo_upstream) -> None:
    gw, der, bound, bearer = await _setup(
        make_gateway, echo_upstream, trusted_proxies=["127.0.0.1"]
    )
    other, _, _ = make_cert("other")
    auth = ("Authorization", f"Bearer {bound}")
    status, _, body = await _request(f"{gw.url}/x", [auth, ("X-Forwarded-Client-Cert", xfcc(der))])
    assert status == 200, body
    sent = {k.lower(): v for k, v in echo_upstream.last["headers"]}
    assert sent["x-auth-binding"] == "mtls"
    for headers in ([auth], [auth, ("X-Forwarded-Client-Cert", xfcc(other))]):
        status, _, body = await _request(f"{gw.url}/x", headers)
        assert status == 401
        assert json.loads(body) == {
            "error": "invalid_token",
            "error_description": "The access token is not bound to the key or certificate "
            "presented.",
        }
    # sender_constraint: mtls refuses an unbound token, takes the bound one
    status, _, body = await _request(
        f"{gw.url}/mtls",
        [("Authorization", f"Bearer {bearer}"), ("X-Forwarded-Client-Cert", xfcc(der))],
    )
    assert status == 401
    assert json.loads(body)["error_description"] == (
        "This resource requires a sender-constrained access token."
    )
    status, _, _ = await _request(f"{gw.url}/mtls", [auth, ("X-Forwarded-Client-Cert", xfcc(der))])
    assert status == 200


async def test_nginx_escaped_pem_in_a_configured_header(make_gateway, echo_upstream) -> None:
    gw, der, bound, _ = await _setup(
        make_gateway,
        echo_upstream,
        trusted_proxies=["127.0.0.1"],
        tokens={"mtls": {"cert_header": "X-SSL-Client-Cert"}},
    )
    cert = x509.load_der_x509_certificate(der)
    pem = quote(cert.public_bytes(serialization.Encoding.PEM).decode())
    auth = ("Authorization", f"Bearer {bound}")
    assert (await _request(f"{gw.url}/x", [auth, ("X-SSL-Client-Cert", pem)]))[0] == 200
    # the default header is not read when another is configured
    assert (await _request(f"{gw.url}/x", [auth, ("X-Forwarded-Client-Cert", xfcc(der))]))[0] == 401


async def test_certificate_header_from_untrusted_peer_ignored(make_gateway, echo_upstream):
    gw, der, bound, _ = await _setup(make_gateway, echo_upstream)
    headers = [("Authorization", f"Bearer {bound}"), ("X-Forwarded-Client-Cert", xfcc(der))]
    status, _, _ = await _request(f"{gw.url}/x", headers)
    assert status == 401


async def test_forward_auth_reads_the_proxy_certificate(make_gateway, echo_upstream) -> None:
    """The decision listener is reached only by the front proxy: its header counts."""
    gw, der, bound, _ = await _setup(
        make_gateway, echo_upstream, forward_auth={"host": "127.0.0.1", "port": 0}
    )
    url = f"http://127.0.0.1:{gw.gateway.ports['forward_auth']}/"
    base = [("Authorization", f"Bearer {bound}"), ("X-Original-URI", "/mtls/x")]
    status, headers, _ = await _request(url, [*base, ("X-Forwarded-Client-Cert", xfcc(der))])
    assert status == 200
    assert headers["X-Auth-Binding"] == "mtls"
    assert (await _request(url, base))[0] == 401


async def test_session_endpoint_checks_certificate(make_gateway, echo_upstream) -> None:
    gw, der, bound, _ = await _setup(make_gateway, echo_upstream, trusted_proxies=["127.0.0.1"])
    url = f"{gw.url}/oauth20/access-token"
    auth = ("Authorization", f"Bearer {bound}")
    assert (await _request(url, [auth]))[0] == 401
    assert (await _request(url, [auth, ("X-Forwarded-Client-Cert", xfcc(der))]))[0] == 200


@pytest.mark.skipif(
    "tls" not in ListenConfig.model_fields,
    reason="listen.tls (branch tls-listen) is not on this branch yet: enable once merged",
)
async def test_tls_listener_peer_certificate(make_gateway, echo_upstream, tmp_path) -> None:
    """A certificate-bound token over a TLS listener that asks for client certificates: the
    verified certificate's thumbprint (ClientConnection.peer_certificate) is what counts."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)

    def issue(name: str, key: Any, san: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256())

    # a CA that signs both the server and the client certificate
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = issue("localhost", server_key, True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = issue("client", client_key, False)

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    files = {
        "ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.pem": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": pem_key(server_key),
        "client.pem": client_cert.public_bytes(serialization.Encoding.PEM),
        "client.key": pem_key(client_key),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tls = {
        "cert_file": str(tmp_path / "server.pem"),
        "key_file": str(tmp_path / "server.key"),
        "client_ca_file": str(tmp_path / "ca.pem"),
    }
    cfg = base_config(echo_upstream.url, routes=ROUTES)
    cfg["listen"] = {**cfg["listen"], "tls": tls}
    gw = await make_gateway(cfg)
    client_der = client_cert.public_bytes(serialization.Encoding.DER)
    token = await gw.gateway.runtime.validator.issue(
        "code", "app", "alice", "", binding=Binding(x5t=x5t(client_der))
    )
    other = await gw.gateway.runtime.validator.issue(
        "code", "app", "alice", "", binding=Binding(x5t=x5t(make_cert()[0]))
    )
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    url = f"https://localhost:{gw.port}/mtls/x"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, ssl=ctx, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        async with s.get(url, ssl=ctx, headers={"Authorization": f"Bearer {other}"}) as r:
            assert r.status == 401
    plain = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, ssl=plain, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        assert r.status == 401  # no client certificate
