"""`gateway demo`: an echo upstream and the gateway on embedded defaults, no Redis, no IdP.

Mints one authorization-code token and one implicit token, prints curl commands that show every
answer of SPEC section 4 and a rate limit's 429 (section 14), and (with --self-test) runs them
and checks each status. With --tls the gateway listens on HTTPS with a throwaway CA and
certificates made in a temp dir (removed at the end), asks clients for an optional
certificate, and the commands use `--cacert`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import shlex
import socket
import ssl
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.authn.store import Binding
from gateway.bound import b64url, jwk_thumbprint, token_hash
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


@dataclass
class DemoPki:
    """A throwaway CA, a server certificate for 127.0.0.1 / localhost and a client certificate,
    as PEM files in one folder."""

    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str

    @classmethod
    def create(cls, folder: Path) -> DemoPki:
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway demo CA")])
        ca = (
            _cert_builder(ca_name, ca_name, ca_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            cn: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
        ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
            builder = (
                _cert_builder(subject, ca_name, key.public_key(), now)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(cert_sign=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            )
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            return builder.sign(ca_key, hashes.SHA256()), key

        server, server_key = leaf(
            "localhost",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        client, client_key = leaf("demo client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

        def write(name: str, data: bytes) -> str:
            path = folder / name
            path.write_bytes(data)
            return str(path)

        pem = serialization.Encoding.PEM
        return cls(
            ca_file=write("ca.crt", ca.public_bytes(pem)),
            cert_file=write("server.crt", server.public_bytes(pem)),
            key_file=write("server.key", _pem_key(server_key)),
            client_cert_file=write("client.crt", client.public_bytes(pem)),
            client_key_file=write("client.key", _pem_key(client_key)),
        )

    def listener(self) -> dict[str, object]:
        """The `listen.tls` block: this certificate, client certificates from this CA optional."""
        return {
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "client_ca_file": self.ca_file,
            "client_auth": "optional",
        }


def _cert_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def demo_config(
    port: int, upstream: str, dead: str, tls: dict[str, object] | None = None
) -> dict[str, object]:
    """The embedded config: in-memory store and cache, one app for appsecret_proof; `tls`, the
    main listener's TLS block (--tls)."""
    listen: dict[str, object] = {"host": "127.0.0.1", "port": port}
    if tls is not None:
        listen["tls"] = tls
    return {
        "listen": listen,
        "admin": {"host": "127.0.0.1", "port": 0},
        "log": {"format": "json", "access": False},
        "limits": {"max_body": "1KiB"},
        "apps": [{"client_id": APP_ID, "secrets": [APP_SECRET]}],
        "trusted_proxies": ["127.0.0.1"],  # the mTLS rows play the front proxy
        "resources": [
            {"id": demo_resource(port), "authorization_servers": ["https://idp.example/"]}
        ],
        "tokens": {"dpop": {"max_age": "10m"}},  # the printed proofs stay usable a while
        "rate_limits": {"per_client": {"key": ["client_id"], "rate": "2/m"}},
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
            {
                "name": "orders",
                "path_prefix": "/v1/orders",
                "upstream": "echo",
                "resource": demo_resource(port),
            },
            {
                "name": "transfers",
                "path_prefix": "/v1/transfers",
                "upstream": "echo",
                "sender_constraint": "any",
            },
            {
                "name": "limited",
                "path_prefix": "/v1/limited",
                "upstream": "echo",
                "rate_limit": "per_client",
            },
            {"name": "api", "path_prefix": "/v1", "upstream": "echo", "query_token": True},
        ],
    }


def demo_resource(port: int) -> str:
    """The demo's protected resource (RFC 8707 identifier) for /v1/orders."""
    return f"http://127.0.0.1:{port}/v1/orders"


class DemoKey:
    """A DPoP client key (ES256) and the proofs it signs (RFC 9449 4.2)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        self._algo = ECAlgorithm(ECAlgorithm.SHA256)
        self._key = ec.generate_private_key(ec.SECP256R1())
        jwk = orjson.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        self.jwk = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
        self.thumbprint = jwk_thumbprint(self.jwk)

    def proof(self, method: str, url: str, token: str) -> str:
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        claims = {
            "jti": str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time()),
            "ath": token_hash(token),
        }  # fmt: skip
        signing_input = b64url(orjson.dumps(head)) + "." + b64url(orjson.dumps(claims))
        signature = self._algo.sign(signing_input.encode(), self._key)
        return signing_input + "." + b64url(signature)


#: the client certificate of the mTLS rows (its DER's SHA-256; a front proxy would verify it)
DEMO_CERT_SHA256 = hashlib.sha256(b"demo client certificate").digest()


@dataclass
class Bound:
    """The demo's audience-restricted and sender-constrained tokens."""

    orders: str  # aud = the orders resource
    dpop: str  # bound to `key`
    mtls: str  # bound to DEMO_CERT_SHA256
    key: DemoKey
    base: str


@dataclass
class Step:
    title: str
    method: str
    path: str
    headers: dict[str, str]
    expect: int
    body: bytes | None = None
    client_cert: bool = False  # --tls: present the demo client certificate
    shows: str = ""  # the answer's body must contain it (what the upstream echoed)

    def curl(self, base: str, pki: DemoPki | None = None) -> str:
        parts = ["curl", "-i"]
        if pki is not None:
            parts += ["--cacert", pki.ca_file]
            if self.client_cert:
                parts += ["--cert", pki.client_cert_file, "--key", pki.client_key_file]
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


def demo_steps(
    code: str, implicit: str, tls: bool = False, bound: Bound | None = None
) -> list[Step]:
    """Every row of SPEC section 4, as requests against the demo routes (then the bound-token
    rows of sections 12 and 13 when `bound` is given); with `tls`, one more with a client
    certificate (the upstream sees X-Forwarded-Client-Cert)."""
    bearer = {"Authorization": f"Bearer {code}"}
    imp = {"Authorization": f"Bearer {implicit}"}
    proof = compute_proof(code, APP_SECRET)
    steps = [
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
        Step("rate limit 2/m, first", "GET", "/v1/limited", bearer, 200),
        Step("rate limit 2/m, second", "GET", "/v1/limited", bearer, 200),
        Step("rate limit 2/m, third: over", "GET", "/v1/limited", bearer, 429),
        Step("session details", "GET", "/oauth20/access-token", imp, 200),
        Step("revoke the session", "DELETE", "/oauth20/access-token", imp, 200),
        Step("revoked token", "GET", "/v1/items", imp, 401),
        *(bound_steps(code, bound) if bound is not None else []),
    ]
    if tls:
        with_cert = Step("client certificate (X-Forwarded-Client-Cert)", "GET", "/status", {}, 200)
        with_cert.client_cert = True
        steps.append(with_cert)
    return steps


def bound_steps(code: str, b: Bound) -> list[Step]:
    """SPEC sections 12 and 13: resource metadata, audience, DPoP, certificate-bound tokens."""
    dpop_url = b.base + "/v1/transfers/7"
    proof = b.key.proof("GET", dpop_url, b.dpop)
    dpop = {"Authorization": f"DPoP {b.dpop}", "DPoP": proof}
    xfcc = {"X-Forwarded-Client-Cert": f"Hash={DEMO_CERT_SHA256.hex()}"}
    mtls = {"Authorization": f"Bearer {b.mtls}"}
    return [
        Step("resource metadata (RFC 9728)", "GET",
             "/.well-known/oauth-protected-resource/v1/orders", {}, 200),
        Step("token for this resource (aud)", "GET", "/v1/orders/1",
             {"Authorization": f"Bearer {b.orders}"}, 200),
        Step("token for no resource: 401 with resource_metadata", "GET", "/v1/orders/1",
             {"Authorization": f"Bearer {code}"}, 401),
        Step("DPoP-bound token with its proof", "GET", "/v1/transfers/7", dpop, 200),
        Step("the same proof again (replay)", "GET", "/v1/transfers/7", dpop, 401),
        Step("DPoP-bound token sent as Bearer", "GET", "/v1/items",
             {"Authorization": f"Bearer {b.dpop}"}, 401),
        Step("bearer token where a bound one is required", "GET", "/v1/transfers/7",
             {"Authorization": f"Bearer {code}"}, 401),
        Step("certificate-bound token, certificate from the proxy", "GET", "/v1/transfers/7",
             {**mtls, **xfcc}, 200),
        Step("certificate-bound token without its certificate", "GET", "/v1/transfers/7",
             mtls, 401),
    ]  # fmt: skip


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


async def _run(port: int, self_test: bool, pki: DemoPki | None) -> int:
    runner = web.AppRunner(_echo_app(), access_log=None)
    await runner.setup()
    up_port = _free_port(0)
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    dead = f"http://127.0.0.1:{_free_port(0)}"
    port = _free_port(port)
    tls = pki.listener() if pki is not None else None
    gw = Gateway(parse_config(demo_config(port, f"http://127.0.0.1:{up_port}", dead, tls)))
    await gw.start()
    assert gw.runtime is not None
    validator = gw.runtime.validator
    code = await validator.issue("authorization_code", APP_ID, "alice", "payments profile")
    implicit = await validator.issue("implicit", APP_ID, "alice", "profile")
    base = f"{'https' if pki is not None else 'http'}://127.0.0.1:{port}"
    key = DemoKey()
    bound = Bound(
        orders=await validator.issue(
            "authorization_code", APP_ID, "alice", "", binding=Binding((demo_resource(port),))
        ),
        dpop=await validator.issue(
            "client_credentials", APP_ID, "svc", "", binding=Binding(jkt=key.thumbprint)
        ),
        mtls=await validator.issue(
            "client_credentials", APP_ID, "svc", "", binding=Binding(x5t=b64url(DEMO_CERT_SHA256))
        ),
        key=key,
        base=base,
    )
    steps = demo_steps(code, implicit, tls=pki is not None, bound=bound)
    print(
        f"Echo upstream on 127.0.0.1:{up_port}; gateway on {base}; admin on "
        f"http://127.0.0.1:{gw.ports['admin']}/metrics\n"
    )
    if pki is not None:
        print(
            f"TLS: a throwaway CA made for this run ({pki.ca_file}), a server certificate for "
            "127.0.0.1 / localhost, and a client certificate (optional; its hash and subject "
            "reach the upstream as X-Forwarded-Client-Cert). Removed when the demo stops.\n"
        )
    print(f"authorization_code token (365 d): {code}")
    print(f"implicit token (6 h):             {implicit}")
    print(f"app {APP_ID!r} secret:            {APP_SECRET}\n")
    for i, step in enumerate(steps, 1):
        print(f"# {i}. {step.title} -> expect {step.expect}")
        print(step.curl(base, pki) + "\n")
    failures = 0
    try:
        if self_test:
            failures = await _check(base, steps, pki)
        else:
            print("Paste the commands above in another terminal. Ctrl-C stops the demo.")
            await asyncio.Event().wait()
    finally:
        await gw.close()
        await runner.cleanup()
    return 1 if failures else 0


def _session(ctx: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))


async def _check(base: str, steps: list[Step], pki: DemoPki | None = None) -> int:
    """Run every step; over TLS, also check X-Forwarded-Proto and X-Forwarded-Client-Cert as
    the echo upstream saw them."""
    failures = 0
    if pki is None:
        plain, with_cert = _session(), None
    else:
        mine = ssl.create_default_context(cafile=pki.ca_file)
        mine.load_cert_chain(pki.client_cert_file, pki.client_key_file)
        plain, with_cert = _session(ssl.create_default_context(cafile=pki.ca_file)), _session(mine)
    async with plain, with_cert or contextlib.nullcontext():
        for step in steps:
            session = with_cert if step.client_cert and with_cert is not None else plain
            async with session.request(
                step.method, base + step.path, headers=step.headers, data=step.body
            ) as resp:
                raw = await resp.read()
            ok = resp.status == step.expect and step.shows.encode() in raw
            detail = ""
            if resp.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    answer = orjson.loads(raw)
                    detail = str(answer.get("error", ""))
                    if pki is not None and resp.status == 200 and "headers" in answer:
                        seen = {k.lower(): v for k, v in answer["headers"].items()}
                        ok = ok and _tls_headers_ok(seen, step.client_cert)
                        cert = seen.get("x-forwarded-client-cert")
                        detail = f"X-Forwarded-Client-Cert: {cert}" if cert else detail
            failures += not ok
            print(f"{'ok ' if ok else 'BAD'} {resp.status} {step.title} {detail}".rstrip())
    print(f"demo: {len(steps) - failures} of {len(steps)} answers as expected")
    return failures


def _tls_headers_ok(headers: dict[str, str], client_cert: bool) -> bool:
    """What the echo upstream saw of an HTTPS request (names lower-cased): X-Forwarded-Proto
    https, and an X-Forwarded-Client-Cert exactly when the client presented its certificate."""
    cert = headers.get("x-forwarded-client-cert")
    has_cert = cert is not None and cert.startswith("Hash=") and ';Subject="' in cert
    return headers.get("x-forwarded-proto") == "https" and has_cert == client_cert


def run_demo(port: int = 8080, self_test: bool = False, tls: bool = False) -> int:
    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="gateway-demo-tls-") as folder:
        pki = DemoPki.create(Path(folder)) if tls else None
        try:
            return asyncio.run(_run(port, self_test, pki))
        except KeyboardInterrupt:
            print("demo stopped", file=sys.stderr)
            return 0
