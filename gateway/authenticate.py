"""The authenticate stage: credentials → the token's identity → authorization, once for the
proxy, the session endpoint and forward-auth alike.

`begin()` answers without waiting when the token's answer is in the in-process cache (Envoy's
filter chain returning Continue); otherwise it returns a `Pending` and the caller awaits
`finish()` (StopIteration, resumed when the lookup answers). Both end in the same
authorization step, so a new check on a token is written once, in `_authorize`: the audience
and sender-constraint checks (resource, DPoP proof, client certificate) first, then
appsecret_proof, grants and scopes.
"""

from __future__ import annotations

import hmac
import time
from typing import Final

from gateway.authn.cache import TokenDigest
from gateway.authn.info import TokenInfo
from gateway.authn.validator import TokenValidator
from gateway.authz import SENDER_ANY, SENDER_DPOP, SENDER_MTLS, AppRegistry, AuthPolicy, authorize
from gateway.bound import (
    DpopVerifier,
    Proof,
    certificate_thumbprint,
    forwarded_certificate,
    request_uri,
)
from gateway.errors import (
    MissingTokenError,
    TokenBindingError,
    UnboundTokenError,
    WrongAudienceError,
)
from gateway.extract import Credentials, KnownBearer, extract_credentials, strip_form_token
from gateway.http.exchange import Exchange
from gateway.tracecontext import Recording
from gateway.upstream_headers import TrustedProxies

_FORM: Final = b"application/x-www-form-urlencoded"
_wall_clock: Final = time.time  # a C static when compiled, not a module attribute lookup
_compare_digest: Final = hmac.compare_digest


class Pending:
    """A request whose token must be looked up (or whose form body may carry it) first."""

    __slots__ = ("creds", "digest")

    def __init__(self, creds: Credentials | None, digest: TokenDigest | None) -> None:
        self.creds = creds  # None: the credentials are read once the form body is in
        self.digest = digest


class Authenticated:
    """What the session endpoint needs besides the identity: the token and its digest."""

    __slots__ = ("digest", "info", "token")

    def __init__(self, token: str, digest: TokenDigest, info: TokenInfo) -> None:
        self.token = token
        self.digest = digest
        self.info = info


class SenderCheck:
    """What the sender-constraint checks need besides the token: the DPoP verifier, who may
    describe the request's scheme, host and client certificate (trusted proxies; everyone on
    the forward-auth listener, which only the front proxy reaches), and the header name."""

    __slots__ = ("cert_header", "described", "dpop", "shared_replay", "trusted")

    def __init__(
        self,
        dpop: DpopVerifier,
        trusted: TrustedProxies,
        cert_header: str,
        described: bool = False,
    ) -> None:
        self.dpop = dpop
        self.trusted = trusted
        self.cert_header = cert_header.lower().encode("latin-1")
        self.described = described
        self.shared_replay = dpop.shared is not None  # a DPoP request waits for Redis

    def for_forward_auth(self) -> SenderCheck:
        """The same checks for requests a front proxy describes (forward-auth mode)."""
        return SenderCheck(self.dpop, self.trusted, self.cert_header.decode(), True)

    def request_uri(self, ex: Exchange) -> str:
        """The URI the client used (RFC 9449 `htu`): the listener's scheme and Host, or the
        X-Forwarded-Proto / -Host of a trusted proxy, or what forward-auth describes."""
        head = ex.head
        host = head.host
        if self.described:
            proto = head.header(b"x-forwarded-proto")
            scheme = _first(proto) if proto else "http"
        else:
            scheme = ex.conn.scheme
            if ex.client_ip in self.trusted:
                proto = head.header(b"x-forwarded-proto")
                if proto:
                    scheme = _first(proto)
                forwarded_host = head.header(b"x-forwarded-host")
                if forwarded_host:
                    host = _first(forwarded_host)
        return request_uri(scheme, host, head.path)

    def certificate(self, ex: Exchange) -> str | None:
        """The `x5t#S256` of the client's certificate: the one a trusted front proxy passed in
        `tokens.mtls.cert_header`, else the one verified on this TLS listener."""
        if self.described or ex.client_ip in self.trusted:
            passed = ex.head.header(self.cert_header)
            if passed is not None:
                return forwarded_certificate(passed)
        der = ex.conn.peer_certificate
        return certificate_thumbprint(der) if der is not None else None

    def proof(self, ex: Exchange, token: str, now: float) -> Proof:
        """The request's DPoP proof, checked (RFC 9449 4.3) but for the key binding."""
        head = ex.head
        proofs = [value for name, value in head.headers if name == b"dpop"]
        return self.dpop.verify(proofs, head.method, self.request_uri(ex), token, now)


def _first(value: bytes) -> str:
    """The first member of a comma-separated X-Forwarded-* value (the client-facing proxy's)."""
    return value.decode("latin-1").partition(",")[0].strip()


class Authenticator:
    """One per runtime; reads the token cache and sources through the validator."""

    def __init__(self, validator: TokenValidator, apps: AppRegistry, sender: SenderCheck) -> None:
        self.validator = validator
        self.apps = apps
        self.sender = sender

    # -------------------------------------------------------------- without waiting
    def begin(self, ex: Exchange, policy: AuthPolicy) -> TokenInfo | Pending:
        """The authorized identity when the cache knows the token; else what to finish().

        A keep-alive client sends the same Authorization value on every request: the
        connection keeps the last one with its token and digest, and extraction hands back that
        very token object when the value is equal (compared in constant time: a proxy in front
        may carry many users' requests on one connection). Freshness and revocation are still
        checked by the cache on every request."""
        if policy.extract.form_allowed and ex.head.method == "POST" and _is_form(ex):
            return Pending(None, None)  # the body may carry the token: wait for it
        conn = ex.conn
        memo = conn.token_memo
        creds = self._extract(ex, policy, None, memo)
        token = creds.token
        assert token is not None
        if memo is not None and token is memo.token:
            digest = memo.digest
        else:
            digest = TokenDigest.of(token)
            raw = ex.head.header(b"authorization") if not creds.in_query else None
            if raw is not None:
                conn.token_memo = KnownBearer(raw, token, digest, creds.dpop)
        now = _wall_clock()
        info = self.validator.peek(digest, now)
        if info is None or (creds.dpop and self.sender.shared_replay):
            return Pending(creds, digest)  # a lookup, or a DPoP jti to record in Redis
        trace = ex.trace
        if trace is not None:
            recording = trace.recording
            if recording is not None:  # a sampled request: the lookup's span, a cache hit
                recording.cache_hit(info)
        self._authorize(ex, info, policy, creds, now)
        return info

    # ---------------------------------------------------------------- after waiting
    async def finish(self, ex: Exchange, policy: AuthPolicy, pending: Pending) -> TokenInfo:
        """begin()'s answer once the token is looked up (and the form body is in)."""
        creds, digest = pending.creds, pending.digest
        if creds is None or digest is None:
            creds = await self.credentials(ex, policy)
            assert creds.token is not None
            digest = TokenDigest.of(creds.token)
        trace = ex.trace
        return await self.identify(
            ex, creds, digest, policy, trace.recording if trace is not None else None
        )

    async def authenticate(self, ex: Exchange, policy: AuthPolicy) -> TokenInfo:
        """begin(), then finish() when it must wait."""
        result = self.begin(ex, policy)
        if isinstance(result, TokenInfo):
            return result
        return await self.finish(ex, policy, result)

    async def authenticate_token(self, ex: Exchange, policy: AuthPolicy) -> Authenticated:
        """authenticate(), keeping the token and its digest (the session endpoint's DELETE
        revokes it, its GET shows it)."""
        creds = await self.credentials(ex, policy)
        token = creds.token
        assert token is not None
        digest = TokenDigest.of(token)
        return Authenticated(token, digest, await self.identify(ex, creds, digest, policy))

    async def credentials(self, ex: Exchange, policy: AuthPolicy) -> Credentials:
        """The credentials, after waiting for a urlencoded body when it may carry the token."""
        form_body = None
        if policy.extract.form_allowed and ex.head.method == "POST" and _is_form(ex):
            await ex.wait_body()
            if ex.body_error is not None:
                raise ex.body_error
            form_body = ex.take_buffered_body()
        return self._extract(ex, policy, form_body, None)

    async def identify(
        self,
        ex: Exchange,
        creds: Credentials,
        digest: TokenDigest,
        policy: AuthPolicy,
        recording: Recording | None = None,
    ) -> TokenInfo:
        """The token's identity from the cache or its sources, then authorized (and a DPoP
        proof's jti recorded for every replica); a sampled request's `recording` gets the
        lookup's span (and, through it, the calls it makes)."""
        token = creds.token
        assert token is not None
        validator = self.validator
        info = validator.peek(digest, _wall_clock())
        if info is None:
            lookup = validator.validate(token, digest)
            info = await (lookup if recording is None else recording.lookup(lookup))
        elif recording is not None:
            recording.cache_hit(info)
        proof = self._authorize(ex, info, policy, creds, _wall_clock())
        if proof is not None:
            await self.sender.dpop.first_shared(proof)
        return info

    # ------------------------------------------------------------------- shared steps
    def _extract(
        self,
        ex: Exchange,
        policy: AuthPolicy,
        form_body: bytes | None,
        known: KnownBearer | None,
    ) -> Credentials:
        """Credentials from the header, query or form body; RFC 6750 rules (RFC 9449's DPoP
        scheme too). The route's challenge shape is set for the refusals to come."""
        challenge = policy.challenge
        if challenge is not None:
            ex.challenge = challenge
        creds = extract_credentials(
            ex.head.headers, ex.head.query, policy.extract, form_body, known
        )
        if creds.dpop:
            ex.challenge = policy.dpop_challenge
            ex.answer_headers += self.sender.dpop.nonce_header(_wall_clock())
        if creds.in_query:
            ex.private_cache = True  # RFC 6750 2.3
        if creds.token is None:
            raise MissingTokenError("missing_token")
        if creds.in_form and form_body is not None and policy.strip_form_token:
            ex.replace_body(strip_form_token(form_body))
        return creds

    def _authorize(
        self, ex: Exchange, info: TokenInfo, policy: AuthPolicy, creds: Credentials, now: float
    ) -> Proof | None:
        """Every check of a known token against the route's policy, in one place. Returns the
        DPoP proof whose jti is still to be recorded in Redis, if any."""
        proof = None
        if policy.bound or creds.dpop or info.jkt is not None or info.x5t is not None:
            proof = self._bound(ex, info, policy, creds, now)
        authorize(info, policy, creds, self.apps, now)
        return proof

    def _bound(
        self, ex: Exchange, info: TokenInfo, policy: AuthPolicy, creds: Credentials, now: float
    ) -> Proof | None:
        """The resource (audience) and the token's binding (RFC 8707, RFC 9449, RFC 8705): a
        bound token is always checked by its binding; the route's sender_constraint refuses
        tokens without the binding it asks for."""
        resource = policy.resource
        if resource is not None and resource not in info.audience:
            raise WrongAudienceError("wrong_audience")
        sender = self.sender
        jkt = info.jkt
        proof: Proof | None = None
        if creds.dpop:
            token = creds.token
            assert token is not None
            proof = sender.proof(ex, token, now)
            if jkt is None:
                raise TokenBindingError("dpop_unbound_token")
            if not _compare_digest(proof.jkt, jkt):
                raise TokenBindingError("dpop_key_mismatch")
            sender.dpop.first_local(proof)
        elif jkt is not None:
            raise TokenBindingError("dpop_token_as_bearer")
        x5t = info.x5t
        if x5t is not None:
            presented = sender.certificate(ex)
            if presented is None:
                raise TokenBindingError("mtls_no_certificate")
            if not _compare_digest(presented, x5t):
                raise TokenBindingError("mtls_certificate_mismatch")
        constraint = policy.sender
        if constraint == SENDER_DPOP and jkt is None:
            raise UnboundTokenError("dpop_required")
        if constraint == SENDER_MTLS and x5t is None:
            raise UnboundTokenError("mtls_required")
        if constraint == SENDER_ANY and jkt is None and x5t is None:
            raise UnboundTokenError("binding_required")
        return proof if proof is not None and sender.shared_replay else None


def _is_form(ex: Exchange) -> bool:
    ctype = ex.head.header(b"content-type")
    return ctype is not None and ctype.split(b";", 1)[0].strip().lower() == _FORM
