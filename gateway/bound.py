"""Sender-constrained tokens at the resource server: DPoP proofs (RFC 9449 section 4.3) and
certificate-bound tokens (RFC 8705 section 3). No I/O except the shared `jti` record in Redis.

A DPoP proof is a JWS whose header carries the public key that signs it; the token's
`cnf.jkt` names that key by its RFC 7638 thumbprint. Every check of RFC 9449 section 4.3 is
made, in its order: one `DPoP` header, a well-formed JWT, `typ` `dpop+jwt`, an allowed
asymmetric `alg`, a public `jwk` (no private members) whose signature verifies, `htm`, `htu`,
`nonce` (when required), `iat` within `max_age` (5 s ahead allowed), `ath`, then the key
binding and the `jti` replay check (the caller's, after the key binding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import orjson
import structlog
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

from gateway.config.models import DpopConfig
from gateway.errors import BadHttpRequestError, InvalidDpopProofError, UseDpopNonceError
from gateway.normalize import normalize_path
from gateway.redis_conn import RedisConnection, RedisUnavailableError

log = structlog.get_logger()

#: seconds a proof's `iat` may be ahead of the gateway's clock (RFC 9449 11.1: "a few seconds")
FUTURE_SKEW: Final = 5.0
MAX_PROOF_BYTES: Final = 8192
MAX_JTI_LENGTH: Final = 256
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; ValueError for anything else."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_hash(token: str) -> str:
    """`ath`: base64url(SHA-256(the access token's ASCII))."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def certificate_thumbprint(der: bytes) -> str:
    """RFC 8705 `x5t#S256`: base64url(SHA-256(the DER certificate))."""
    return b64url(hashlib.sha256(der).digest())


# -- keys ---------------------------------------------------------------------------------------

#: members of each key type's RFC 7638 thumbprint, in lexicographic order
_THUMBPRINT_MEMBERS: Final[dict[str, tuple[str, ...]]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
#: private-key members of RFC 7518 / RFC 8037 (a proof carrying one is refused)
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK; ValueError when it is not one."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError("unsupported kty")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"missing {name}")
        required[name] = value
    canonical = orjson.dumps(required)  # keys in the order given: lexicographic; no spaces
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True, slots=True)
class _Alg:
    verifier: Any  # a PyJWT algorithm object: verify(msg, key, sig), from_jwk(jwk)
    kty: str
    curves: frozenset[str] | None  # the curves the alg may use (EC / OKP)


_EC_CURVE: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


def _algorithm(name: str) -> _Alg:
    if name in _EC_CURVE:
        bits = int(name[2:])
        hash_alg = {256: ECAlgorithm.SHA256, 384: ECAlgorithm.SHA384, 512: ECAlgorithm.SHA512}
        return _Alg(ECAlgorithm(hash_alg[bits]), "EC", frozenset({_EC_CURVE[name]}))
    if name.startswith(("RS", "PS")):
        bits = int(name[2:])
        hashes = {256: RSAAlgorithm.SHA256, 384: RSAAlgorithm.SHA384, 512: RSAAlgorithm.SHA512}
        cls = RSAAlgorithm if name.startswith("RS") else RSAPSSAlgorithm
        return _Alg(cls(hashes[bits]), "RSA", None)
    if name == "EdDSA":
        return _Alg(OKPAlgorithm(), "OKP", frozenset({"Ed25519", "Ed448"}))
    if name == "Ed25519":  # RFC 9864's fully-specified name
        return _Alg(OKPAlgorithm(), "OKP", frozenset({"Ed25519"}))
    raise ValueError(f"unsupported DPoP algorithm {name}")


class _Header:
    """What a proof's (valid) JOSE header gives: the algorithm, the key and its thumbprint."""

    __slots__ = ("alg", "jkt", "key")

    def __init__(self, alg: _Alg, jkt: str, key: Any) -> None:
        self.alg = alg
        self.jkt = jkt
        self.key = key


class HeaderCache:
    """Checked headers by their exact base64url segment: a client sends the same header (typ,
    alg, jwk) with every proof, and decoding it, computing the thumbprint and parsing the key
    (an RSA key above all) cost more than verifying a signature (see bench/bound.py). Only
    headers that passed every check are kept. Bounded; cleared when full."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._headers: dict[str, _Header] = {}

    def get(self, segment: str) -> _Header | None:
        return self._headers.get(segment)

    def put(self, segment: str, header: _Header) -> None:
        if len(self._headers) >= self.size:
            self._headers.clear()
        self._headers[segment] = header


# -- nonces -------------------------------------------------------------------------------------


class NonceSource:
    """RFC 9449 section 9 nonces, stateless: base64url(window || HMAC-SHA256(secret, window)[:16])
    where window counts `window` seconds. A nonce is accepted during its window and the next.
    With a secret file every replica issues and accepts the same nonces (the file is re-read
    when it changes, checked at most once a second); without one the secret is per process."""

    def __init__(self, window: float, secret_file: str | None) -> None:
        self.window = window
        self.secret_file = secret_file
        self._secret = os.urandom(32)
        self._stat: tuple[float, int] | None = None
        self._checked = -1.0
        self._current: tuple[int, str] = (-1, "")
        if secret_file is not None:
            self._reload(time.monotonic(), force=True)

    def _reload(self, mono: float, force: bool = False) -> None:
        if self.secret_file is None or (not force and mono - self._checked < 1.0):
            return
        self._checked = mono
        try:
            st = os.stat(self.secret_file)
            stat = (st.st_mtime, st.st_size)
            if stat == self._stat:
                return
            with open(self.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            if force:
                raise ValueError(f"cannot read nonce_secret_file: {exc.strerror}") from None
            log.error("dpop_nonce_secret_unreadable", path=self.secret_file, error=exc.strerror)
            return
        if not secret:
            log.error("dpop_nonce_secret_empty", path=self.secret_file)
            return
        self._stat = stat
        self._secret = secret
        self._current = (-1, "")

    def _mac(self, window: int) -> bytes:
        packed = struct.pack(">Q", window)
        return packed + hmac.new(self._secret, packed, hashlib.sha256).digest()[:16]

    def current(self, now: float) -> str:
        """The nonce to hand out now (one per window)."""
        self._reload(time.monotonic())
        window = int(now // self.window)
        cached = self._current
        if cached[0] == window:
            return cached[1]
        nonce = b64url(self._mac(window))
        self._current = (window, nonce)
        return nonce

    def valid(self, nonce: object, now: float) -> bool:
        """Whether `nonce` was issued (with the current secret) this window or the last."""
        if not isinstance(nonce, str) or len(nonce) != 32:
            return False
        try:
            raw = b64url_decode(nonce)
        except ValueError:
            return False
        if len(raw) != 24:
            return False
        (window,) = struct.unpack(">Q", raw[:8])
        current = int(now // self.window)
        if window not in (current, current - 1):
            return False
        return hmac.compare_digest(raw, self._mac(window))


# -- replay -------------------------------------------------------------------------------------


class LocalReplay:
    """`jti`s seen in this process: two generations of `span` seconds each, so that a `jti` is
    remembered at least `span` (memory: the proofs of two spans, nothing per request beyond)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._started = time.monotonic()

    def first_time(self, key: str) -> bool:
        """Record `key`; False if it was seen within the last span."""
        mono = time.monotonic()
        if mono - self._started >= self.span:
            fresh = mono - self._started >= 2 * self.span
            self._previous = set() if fresh else self._current
            self._current = set()
            self._started = mono
        if key in self._current or key in self._previous:
            return False
        self._current.add(key)
        return True


_LOCAL: list[LocalReplay] = []


def local_replay(span: float) -> LocalReplay:
    """The process's one record (a reload keeps the jtis already seen), spanning the longest
    max_age configured so far."""
    if not _LOCAL:
        _LOCAL.append(LocalReplay(span))
    replay = _LOCAL[0]
    replay.span = max(replay.span, span)
    return replay


class SharedReplay:
    """`jti`s seen by any replica: `SET {prefix}dpop-jti:{hash} 1 NX EX span`. While Redis is
    unreachable each process judges on its own record (logged once per outage)."""

    def __init__(self, conn: RedisConnection, span: float) -> None:
        self.conn = conn
        self.ttl = max(1, int(span + 0.999))
        self._down = False

    async def first_time(self, key: str) -> bool:
        name = self.conn.key(f"dpop-jti:{key}")
        try:
            done = await self.conn.run(lambda r: r.set(name, b"1", nx=True, ex=self.ttl))
        except RedisUnavailableError:
            if not self._down:
                self._down = True
                log.warning("dpop_replay_local_only", reason="redis_unavailable")
            return True  # the process's own record (checked before) still applies
        if self._down:
            self._down = False
            log.info("dpop_replay_shared_again")
        return bool(done)


# -- proofs -------------------------------------------------------------------------------------


class Proof:
    """A proof that passed RFC 9449 4.3: its key's thumbprint and its replay key."""

    __slots__ = ("jkt", "replay_key")

    def __init__(self, jkt: str, replay_key: str) -> None:
        self.jkt = jkt
        self.replay_key = replay_key


def _refuse(reason: str) -> InvalidDpopProofError:
    return InvalidDpopProofError(reason)


def _segment_json(segment: str, reason: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(b64url_decode(segment))
    except ValueError:
        raise _refuse(reason) from None
    if not isinstance(doc, dict):
        raise _refuse(reason)
    return doc


class DpopVerifier:
    """RFC 9449 section 4.3 for one config; `algs` is the challenge's parameter."""

    def __init__(self, cfg: DpopConfig) -> None:
        self.cfg = cfg
        self.max_age = cfg.max_age
        self.algorithms: dict[str, _Alg] = {name: _algorithm(name) for name in cfg.algorithms}
        self.algs = 'algs="' + " ".join(cfg.algorithms) + '"'
        self.headers = HeaderCache()
        self._uris: dict[str, str | None] = {}  # htu -> canonical_uri(htu), bounded
        self.nonces = NonceSource(cfg.max_age, cfg.nonce_secret_file) if cfg.nonce else None
        self.replay = local_replay(cfg.max_age + FUTURE_SKEW)
        self.shared: SharedReplay | None = None

    def use_redis(self, conn: RedisConnection | None) -> None:
        """Record `jti`s in Redis too, so that a proof is accepted once by all replicas."""
        self.shared = SharedReplay(conn, self.max_age + FUTURE_SKEW) if conn else None

    def verify(self, proofs: list[bytes], method: str, uri: str, token: str, now: float) -> Proof:
        """Check the request's `DPoP` header values against RFC 9449 section 4.3 (all but the
        key binding, which needs the token's `cnf`, and the shared replay record)."""
        if len(proofs) != 1:
            raise _refuse("dpop_header_count")
        raw = proofs[0]
        if len(raw) > MAX_PROOF_BYTES:
            raise _refuse("dpop_too_long")
        try:
            text = raw.decode("ascii").strip(" \t")
        except UnicodeDecodeError:
            raise _refuse("dpop_malformed") from None
        parts = text.split(".")
        if len(parts) != 3:
            raise _refuse("dpop_malformed")
        header = self.headers.get(parts[0])
        if header is None:
            header = self._header(parts[0])
            self.headers.put(parts[0], header)
        try:
            signature = b64url_decode(parts[2])
        except ValueError:
            raise _refuse("dpop_malformed") from None
        signed = (parts[0] + "." + parts[1]).encode("ascii")
        try:
            ok = header.alg.verifier.verify(signed, header.key, signature)
        except Exception:
            ok = False
        if not ok:
            raise _refuse("dpop_signature")
        jkt = header.jkt
        claims = _segment_json(parts[1], "dpop_malformed")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise _refuse("dpop_jti")
        if claims.get("htm") != method:
            raise _refuse("dpop_htm")
        htu = claims.get("htu")
        if not isinstance(htu, str) or self._canonical(htu) != uri:
            raise _refuse("dpop_htu")
        nonces = self.nonces
        if nonces is not None and not nonces.valid(claims.get("nonce"), now):
            raise UseDpopNonceError("dpop_nonce")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise _refuse("dpop_iat")
        if iat < now - self.max_age or iat > now + FUTURE_SKEW:
            raise _refuse("dpop_iat_window")
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, token_hash(token)):
            raise _refuse("dpop_ath")
        replay_key = hashlib.sha256(f"{jkt}:{jti}".encode()).hexdigest()[:32]
        return Proof(jkt, replay_key)

    def _header(self, segment: str) -> _Header:
        """RFC 9449 4.3 points 4-6 (but the signature): typ, alg, a public jwk of its type."""
        header = _segment_json(segment, "dpop_malformed")
        if header.get("typ") != "dpop+jwt":
            raise _refuse("dpop_typ")
        alg_name = header.get("alg")
        alg = self.algorithms.get(alg_name) if isinstance(alg_name, str) else None
        if alg is None:
            raise _refuse("dpop_alg")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise _refuse("dpop_jwk_missing")
        if _PRIVATE_MEMBERS.intersection(jwk):
            raise _refuse("dpop_jwk_private")
        kty = jwk.get("kty")
        if kty != alg.kty or (alg.curves is not None and jwk.get("crv") not in alg.curves):
            raise _refuse("dpop_jwk_alg_mismatch")
        try:
            return _Header(alg, jwk_thumbprint(jwk), alg.verifier.from_jwk(jwk))
        except Exception:  # whatever a bad key makes PyJWT / cryptography raise
            raise _refuse("dpop_jwk_invalid") from None

    def _canonical(self, htu: str) -> str | None:
        found = self._uris.get(htu, False)
        if found is False:
            found = canonical_uri(htu)
            if len(self._uris) >= 4096:
                self._uris.clear()
            self._uris[htu] = found
        return found  # type: ignore[return-value]

    def first_local(self, proof: Proof) -> None:
        """This process's replay record (raises for a `jti` seen within max_age)."""
        if not self.replay.first_time(proof.replay_key):
            raise _refuse("dpop_replayed")

    async def first_shared(self, proof: Proof) -> None:
        """The replicas' replay record in Redis (when configured)."""
        shared = self.shared
        if shared is not None and not await shared.first_time(proof.replay_key):
            raise _refuse("dpop_replayed")

    def nonce_header(self, now: float) -> str:
        """The `DPoP-Nonce` line of every answer to a DPoP request; "" when nonces are off."""
        if self.nonces is None:
            return ""
        return "dpop-nonce: " + self.nonces.current(now) + "\r\n"


# -- the request URI (htu) ----------------------------------------------------------------------

_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def canonical_origin(scheme: str, host: str) -> str:
    """`scheme://host[:port]` lower-cased, a default port written as none."""
    scheme = scheme.strip().lower()
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, port = host[: end + 1], host[end + 2 :] if end != -1 else ""
    else:
        name, _, port = host.partition(":")
    name = name.rstrip(".")
    if port and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{name}:{port}"
    return f"{scheme}://{name}"


def canonical_uri(htu: str) -> str | None:
    """A proof's `htu` as compared: origin as canonical_origin(), the path normalised as the
    gateway normalises request paths, without query and fragment; None when unusable."""
    try:
        parts = urlsplit(htu)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
            return None
        netloc = parts.netloc.rpartition("@")[2]
        path = normalize_path(parts.path or "/")
    except (ValueError, BadHttpRequestError):
        return None
    return canonical_origin(parts.scheme, netloc) + path


def request_uri(scheme: str, host: str | None, path: str) -> str:
    """The request's URI as canonical_uri() writes a matching `htu` (path already normalised)."""
    return canonical_origin(scheme, host or "") + path


# -- certificates from a front proxy ------------------------------------------------------------


def _split_quoted(value: str, sep: str) -> list[str]:
    """`value` split at `sep` outside double quotes (a backslash escapes inside them), as
    X-Forwarded-Client-Cert writes its elements (`,`) and their fields (`;`)."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def _xfcc_elements(value: str) -> list[str]:
    """The comma-separated elements of an X-Forwarded-Client-Cert value (quotes respected)."""
    return _split_quoted(value, ",")


def _xfcc_fields(element: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in _split_quoted(element, ";"):
        name, sep, val = pair.strip().partition("=")
        if sep:
            if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
                val = val[1:-1]
            fields[name.strip().lower()] = val
    return fields


_PEM: Final = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _pem_thumbprint(text: str) -> str | None:
    match = _PEM.search(text)
    if match is None:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0))
    except ValueError:
        return None
    return certificate_thumbprint(der)


def forwarded_certificate(value: bytes) -> str | None:
    """The `x5t#S256` of the client certificate a trusted front proxy passed: Envoy's
    X-Forwarded-Client-Cert (the `Hash=` hex of its last element, the one the nearest proxy
    added; or its URL-encoded `Cert=`), or a URL-encoded PEM (nginx `$ssl_client_escaped_cert`)."""
    text = value.decode("latin-1").strip()
    if not text:
        return None
    if "BEGIN" in text:
        return _pem_thumbprint(unquote(text))
    fields = _xfcc_fields(_xfcc_elements(text)[-1])
    digest = fields.get("hash")
    if digest:
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            return None
        return b64url(raw) if len(raw) == 32 else None
    cert = fields.get("cert")
    return _pem_thumbprint(unquote(cert)) if cert else None
