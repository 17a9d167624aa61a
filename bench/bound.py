"""The bound-token rows of `make bench`: what an audience check and a DPoP proof cost.

One more gateway, configured with a resource and DPoP routes, tokens from the bench IdP (the
bench token, whose answer names the resource, and one DPoP-bound token per algorithm):

- `/bench`: the token route as in the main table (the reference);
- `/aud`: the same route with `resource` (audience checked on every request);
- `/dpop-es256`, `/dpop-rs256`, `/dpop-eddsa`: `sender_constraint: dpop`, each request with a
  fresh proof (one signature verification and one jti record per request, no Redis).

wrk cannot sign, so the proofs are made before the run (unique `jti` each, `max_age: 1h`) and a
Lua script hands each request the next one; a row whose proofs run out would replay them and
show non-2xx answers, so the pools are sized from the measured rate of the bearer route.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

RESOURCE = "https://bench.example/api"
ALGS = ("ES256", "RS256", "EdDSA")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ProofMaker:
    """A DPoP key pair and proofs signed with it (cryptography, as a client library would)."""

    def __init__(self, alg: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        self.alg = alg
        if alg == "ES256":
            self.key: Any = ec.generate_private_key(ec.SECP256R1())
        elif alg == "RS256":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.key = ed25519.Ed25519PrivateKey.generate()
        self.pem = self._pem()

    def _pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def jwk(self) -> dict[str, str]:
        from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

        algo = {"ES256": ECAlgorithm, "RS256": RSAAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        jwk = json.loads(algo.to_jwk(self.key.public_key()))
        return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}

    @property
    def thumbprint(self) -> str:
        jwk = self.jwk
        members = {
            "EC": ("crv", "kty", "x", "y"),
            "RSA": ("e", "kty", "n"),
            "OKP": ("crv", "kty", "x"),
        }
        canonical = json.dumps({m: jwk[m] for m in members[jwk["kty"]]}, separators=(",", ":"))
        return _b64(hashlib.sha256(canonical.encode()).digest())


def _sign_batch(args: tuple[str, bytes, dict[str, str], str, str, int]) -> list[str]:
    """`n` proofs for `GET url` (a worker process: RSA signing is slow)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    alg, pem, jwk, url, token, n = args
    key = load_pem_private_key(pem, None)
    algo: Any = {
        "ES256": ECAlgorithm(ECAlgorithm.SHA256),
        "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
        "EdDSA": OKPAlgorithm(),
    }[alg]
    head = _b64(json.dumps({"typ": "dpop+jwt", "alg": alg, "jwk": jwk}).encode())
    ath = _b64(hashlib.sha256(token.encode()).digest())
    now = int(time.time())
    out = []
    for _ in range(n):
        claims = {"jti": str(uuid.uuid4()), "htm": "GET", "htu": url, "iat": now, "ath": ath}
        signing_input = head + "." + _b64(json.dumps(claims).encode())
        out.append(signing_input + "." + _b64(algo.sign(signing_input.encode(), key)))
    return out


def make_proofs(maker: ProofMaker, url: str, token: str, count: int, path: Path) -> Path:
    """`count` proofs, one per line, in `path`."""
    workers = 2
    batch = -(-count // workers)
    jobs = [(maker.alg, maker.pem, maker.jwk, url, token, batch) for _ in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        proofs = [p for part in pool.map(_sign_batch, jobs) for p in part]
    path.write_text("\n".join(proofs[:count]) + "\n")
    return path


def wrk_script(proofs: Path, script: Path) -> Path:
    """A wrk Lua script sending each request with the next proof of `proofs` (per thread)."""
    script.write_text(
        f"local proofs = {{}}\n"
        f'for line in io.lines("{proofs}") do proofs[#proofs + 1] = line end\n'
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  if i > #proofs then i = 1 end\n"
        '  wrk.headers["DPoP"] = proofs[i]\n'
        "  return wrk.format()\n"
        "end\n"
    )
    return script


def bound_tokens() -> dict[str, str]:
    """A random token per algorithm."""
    return {alg: secrets.token_urlsafe(32) for alg in ALGS}


def bound_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` (gateway_config()) with the resource and the DPoP routes added before the others."""
    routes = [
        {"name": "aud", "path": "/aud", "upstream": "up", "resource": RESOURCE,
         "grants": ["authorization_code"], "scopes": ["bench"]},
        *(
            {"name": f"dpop-{alg.lower()}", "path": f"/dpop-{alg.lower()}", "upstream": "up",
             "sender_constraint": "dpop", "grants": ["authorization_code"], "scopes": ["bench"]}
            for alg in ALGS
        ),
    ]  # fmt: skip
    cfg = {**cfg, "routes": [*routes, *cfg["routes"]]}
    cfg["resources"] = [{"id": RESOURCE, "authorization_servers": ["https://bench.example/"]}]
    cfg["tokens"] = {**cfg["tokens"], "dpop": {"max_age": "1h"}}
    return cfg


def verify_costs(count: int = 2000) -> list[str]:
    """CPU µs of the gateway's proof check per algorithm (gateway.bound.DpopVerifier.verify),
    with and without its header cache, against the signature verification alone; process CPU
    time, so a busy machine inflates it less than wall time."""
    from gateway.bound import DpopVerifier, HeaderCache, _algorithm, b64url_decode, request_uri
    from gateway.config.models import DpopConfig

    class NoCache(HeaderCache):
        def get(self, segment: str) -> None:
            return None

    cfg = DpopConfig(max_age=3600)
    url = "http://127.0.0.1:8080/dpop"
    uri = request_uri("http", "127.0.0.1:8080", "/dpop")
    lines = []
    for alg in ALGS:
        maker = ProofMaker(alg)
        proofs = [p.encode() for p in _sign_batch((alg, maker.pem, maker.jwk, url, "t", count))]
        figures = []
        for cached in (True, False):
            verifier = DpopVerifier(cfg)
            if not cached:
                verifier.headers = NoCache()
            t = time.process_time()
            for proof in proofs:
                verifier.verify([proof], "GET", uri, "t", time.time())
            figures.append((time.process_time() - t) / count * 1e6)
        algo = _algorithm(alg)
        key = algo.verifier.from_jwk(maker.jwk)
        head, body, sig = proofs[0].decode().split(".")
        signature, signed = b64url_decode(sig), f"{head}.{body}".encode()
        t = time.process_time()
        for _ in range(count):
            algo.verifier.verify(signed, key, signature)
        alone = (time.process_time() - t) / count * 1e6
        lines.append(
            f"  {alg:<6} proof check {figures[0]:6.1f} µs (without the header cache "
            f"{figures[1]:6.1f} µs); the signature verification alone {alone:6.1f} µs"
        )
    return lines


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print("\n".join(verify_costs()))
