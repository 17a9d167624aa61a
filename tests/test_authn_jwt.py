"""The `jwt` source: local verification against the fake IdP's JWKS (RSA, EC, Ed25519 keys)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.authn.jwt import is_jws
from gateway.errors import InvalidTokenError, ValidatorUnavailableError


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, key: bytes, digestmod=hashlib.sha256) -> str:
    """A JWS signed with HMAC over `key` (an attacker's trick, done by hand)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(key, signing_input.encode(), digestmod).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_valid_tokens_for_each_key_type(make_validator, idp, alg):
    """RSA (RS256, PS256), EC P-256 and Ed25519 signatures verify against the JWKS."""
    v = await make_validator([idp.jwt_source()])
    info = await v.validate(idp.sign(idp.claims(sub="alice"), alg=alg))
    assert (info.subject, info.client_id, info.scope, info.source) == (
        "alice", "web-app", "read write", "jwt",
    )  # fmt: skip
    assert info.grant == "authorization_code"
    assert idp.jwks_fetches == 1


async def test_rfc9068_claim_fallbacks(make_validator, idp):
    """`scp` lists and `azp` stand in for `scope` and `client_id`."""
    v = await make_validator([idp.jwt_source()])
    claims = idp.claims(scope=None, client_id=None, scp=["a", "b"], azp="spa")
    info = await v.validate(idp.sign(claims))
    assert (info.scope, info.client_id) == ("a b", "spa")


async def test_opaque_tokens_skip_the_jwt_source(make_validator, idp):
    """A token not shaped as a JWS is not judged by the jwt source (no JWKS fetch)."""
    idp.tokens["opaque"] = idp.claims()
    v = await make_validator([idp.jwt_source(), idp.introspection_source()])
    assert (await v.validate("opaque")).source == "introspection"
    assert idp.jwks_fetches == 0
    assert is_jws("a.b.c") and not is_jws("a.b") and not is_jws("a.b.") and not is_jws("a.b.c.d")


async def test_hs256_signed_with_the_public_key_is_refused(make_validator, idp, idp_keys):
    """Algorithm confusion: HS256 keyed with the RSA public key (PEM or JWK n) is refused."""
    v = await make_validator([idp.jwt_source()])
    pem = idp_keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    for key in (pem, idp_keys.jwks[0]["n"].encode()):
        with pytest.raises(InvalidTokenError):
            await v.validate(forge(header, idp.claims(), key))


async def test_alg_none_is_refused(make_validator, idp):
    """`alg: none`, with or without a signature segment, is refused."""
    v = await make_validator([idp.jwt_source()])
    header = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    signing_input = f"{header}.{b64(json.dumps(idp.claims()).encode())}"
    for token in (f"{signing_input}.", f"{signing_input}.c2ln"):
        with pytest.raises(InvalidTokenError):
            await v.validate(token)


async def test_algorithm_outside_the_allowlist_is_refused(make_validator, idp):
    """A correctly signed token whose alg is not configured is refused."""
    v = await make_validator([idp.jwt_source(algorithms=["ES256"])])
    with pytest.raises(InvalidTokenError):
        await v.validate(idp.sign(idp.claims(), alg="RS256"))
    assert (await v.validate(idp.sign(idp.claims(), alg="ES256"))).source == "jwt"


async def test_key_used_only_for_its_family_and_declared_alg(make_validator, idp):
    """An RS256 header naming the EC key's kid fails; so does ES256 on an RSA kid."""
    v = await make_validator([idp.jwt_source()])
    with pytest.raises(InvalidTokenError):
        await v.validate(idp.sign(idp.claims(), alg="RS256", kid="ec-1"))
    with pytest.raises(InvalidTokenError):
        await v.validate(idp.sign(idp.claims(), alg="ES256", kid="rsa-1"))


async def test_bad_signature_is_refused(make_validator, idp):
    """A token signed by a key the IdP does not publish (same kid) is refused."""
    v = await make_validator([idp.jwt_source()])
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidTokenError):
        await v.validate(idp.sign(idp.claims(), key=other))
    header, _payload, sig = idp.sign(idp.claims()).split(".")
    tampered = b64(json.dumps(idp.claims(sub="mallory")).encode())
    with pytest.raises(InvalidTokenError):
        await v.validate(f"{header}.{tampered}.{sig}")


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        ({"exp": -60}, False),
        ({"exp": -10}, True),  # within the 30 s leeway
        ({"nbf": 120}, False),
        ({"nbf": 10}, True),
        ({"aud": "other-api"}, False),
        ({"iss": "https://evil.test/"}, False),
        ({"exp": None}, False),
    ],
    ids=[
        "expired",
        "expired-within-leeway",
        "not-yet-valid",
        "nbf-within-leeway",
        "wrong-aud",
        "wrong-iss",
        "no-exp",
    ],
)
async def test_claims_are_checked_with_leeway(make_validator, idp, overrides, ok):
    """exp, nbf, aud and iss are checked, with the source's leeway for times."""
    now = int(time.time())
    claims = idp.claims(**{k: (now + v if k in ("exp", "nbf") and v else v)
                           for k, v in overrides.items()})  # fmt: skip
    v = await make_validator([idp.jwt_source()])
    token = idp.sign(claims)
    if ok:
        assert (await v.validate(token)).source == "jwt"
    else:
        with pytest.raises(InvalidTokenError):
            await v.validate(token)


async def test_audience_list(make_validator, idp):
    """A token for one of several configured audiences is accepted."""
    v = await make_validator([idp.jwt_source(audience=["x", "api"])])
    assert (await v.validate(idp.sign(idp.claims(aud=["api", "y"])))).source == "jwt"


@pytest.mark.parametrize(
    ("typ", "ok"),
    [("at+jwt", True), ("application/AT+JWT", True), ("JWT", False), (None, False)],
    ids=["at+jwt", "application-at+jwt-any-case", "JWT", "absent"],
)
async def test_require_typ(make_validator, idp, typ, ok):
    """With require_typ, only `at+jwt` / `application/at+jwt` headers (any case) pass."""
    v = await make_validator([idp.jwt_source(require_typ=True)])
    token = idp.sign(idp.claims(), typ=typ)
    if ok:
        assert (await v.validate(token)).source == "jwt"
    else:
        with pytest.raises(InvalidTokenError):
            await v.validate(token)


async def test_token_without_kid(make_validator, idp):
    """A token naming no kid is tried against the keys of its algorithm's family."""
    v = await make_validator([idp.jwt_source()])
    assert (await v.validate(idp.sign(idp.claims(), alg="ES256", kid=None))).source == "jwt"


async def test_unknown_kid_refetch_is_rate_limited(make_validator, idp, idp_keys):
    """An unknown kid refetches the JWKS at most once per interval; a rotated-in key works."""
    v = await make_validator([idp.jwt_source()])
    jwt_source = v.sources[0]
    jwt_source.jwks.refetch_interval = 0.3  # 10 s in production
    await v.validate(idp.sign(idp.claims()))
    assert idp.jwks_fetches == 1
    for i in range(5):
        with pytest.raises(InvalidTokenError):
            await v.validate(idp.sign(idp.claims(jti=str(i)), kid="rsa-2"))
    assert idp.jwks_fetches == 1  # too soon after the first fetch
    await asyncio.sleep(0.3)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(new_key.public_key(), as_dict=True)
    idp.extra_jwks.append({**jwk, "kid": "rsa-2"})
    info = await v.validate(idp.sign(idp.claims(sub="rotated"), kid="rsa-2", key=new_key))
    assert info.subject == "rotated"
    assert idp.jwks_fetches == 2
    for i in range(5):
        with pytest.raises(InvalidTokenError):
            await v.validate(idp.sign(idp.claims(jti=f"x{i}"), kid="rsa-3"))
    assert idp.jwks_fetches == 2


async def test_jwks_unreachable_without_keys_is_unavailable(make_validator, idp):
    """No key cached and the JWKS failing: 503, and it recovers once the JWKS answers."""
    idp.jwks_mode = "fail"
    v = await make_validator([idp.jwt_source()])
    token = idp.sign(idp.claims())
    with pytest.raises(ValidatorUnavailableError):
        await v.validate(token)
    idp.jwks_mode = "ok"
    await asyncio.sleep(1.0)  # failed fetches are retried at most once a second
    assert (await v.validate(token)).source == "jwt"


async def test_jwks_fetch_is_shared_by_concurrent_requests(make_validator, idp):
    """Many first requests with different tokens cause one JWKS fetch."""
    v = await make_validator([idp.jwt_source()])
    tokens = [idp.sign(idp.claims(jti=str(i))) for i in range(50)]
    infos = await asyncio.gather(*(v.validate(t) for t in tokens))
    assert len(infos) == 50
    assert idp.jwks_fetches == 1


async def test_malformed_jws_goes_to_the_next_source(make_validator, idp):
    """Three base64url segments that are not a JWT fall through to introspection."""
    idp.tokens["abc.def.ghi"] = idp.claims()
    v = await make_validator([idp.jwt_source(), idp.introspection_source()])
    assert (await v.validate("abc.def.ghi")).source == "introspection"


async def test_old_keys_are_refreshed_in_the_background(make_validator, idp):
    """Keys past their age are refetched without delaying requests; a failed refresh keeps them."""
    v = await make_validator([idp.jwt_source()])
    jwks = v.sources[0].jwks
    jwks.refetch_interval, jwks.max_key_age = 0.1, 0.2
    await v.validate(idp.sign(idp.claims(jti="1")))
    await asyncio.sleep(0.25)
    idp.jwks_mode = "fail"
    assert (await v.validate(idp.sign(idp.claims(jti="2")))).source == "jwt"
    await asyncio.sleep(0.05)
    assert idp.jwks_fetches == 2
    assert (await v.validate(idp.sign(idp.claims(jti="3")))).source == "jwt"
