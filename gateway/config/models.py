"""The configuration file as immutable pydantic models.

Every field carries its description: `gateway config-reference` prints the reference
(docs/configuration.md) from these models, so a key, default or description changes here only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.units import Duration, Size
from gateway.errors import BadHttpRequestError
from gateway.normalize import normalize_path

GRANTS = frozenset(
    {
        "authorization_code",
        "implicit",
        "client_credentials",
        "password",
        "refresh_token",
        "unknown",
    }
)
HTTP_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]{0,31}$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenerTlsConfig(Model):
    """TLS on a listener (`listen.tls`, `forward_auth.tls`, `admin.tls`): TLS 1.2 and 1.3 only,
    forward-secret AEAD cipher suites only, ALPN `http/1.1`. The certificate and key are re-read
    when their files change and on SIGHUP; a pair that does not load is refused with a logged
    error and the old one keeps serving. Absent: plain HTTP."""

    cert_file: str = Field(
        description="PEM certificate chain, leaf first then intermediates.",
        examples=["/etc/gateway/tls/tls.crt"],
    )
    key_file: str = Field(
        description="PEM private key of the leaf certificate.",
        examples=["/etc/gateway/tls/tls.key"],
    )
    min_version: Literal["1.2", "1.3"] = Field(
        "1.2", description="Lowest TLS version offered: `1.2` or `1.3`; never lower."
    )
    client_ca_file: str | None = Field(
        None,
        description="PEM CA certificates that client certificates must chain to; set, the "
        "listener asks clients for a certificate (mTLS) and passes a verified one upstream as "
        "`X-Forwarded-Client-Cert`.",
        examples=["/etc/gateway/tls/clients.pem"],
    )
    client_auth: Literal["optional", "required"] | None = Field(
        None,
        description="`optional` (the default with `client_ca_file`): a client may present a "
        "certificate; `required`: a client without a valid one never completes the handshake.",
    )

    @model_validator(mode="after")
    def _client_auth_needs_ca(self) -> ListenerTlsConfig:
        if self.client_auth is not None and self.client_ca_file is None:
            raise ValueError("`client_auth` needs `client_ca_file`")
        return self

    @property
    def verify_clients(self) -> Literal["optional", "required"] | None:
        """How client certificates are asked for; None: they are not."""
        if self.client_ca_file is None:
            return None
        return self.client_auth or "optional"


class ClientTlsConfig(Model):
    """TLS towards an `https://` upstream, an identity provider or a `rediss://` Redis: whom to
    trust, the name to verify, and an optional client certificate (upstream mTLS, RFC 8705
    `tls_client_auth`). Certificate files are re-read when they change and on SIGHUP: new
    connections use them, open ones are kept; files that do not load are refused with a logged
    error and the old ones keep serving."""

    ca_file: str | None = Field(
        None,
        description="PEM CA certificates to trust; default: the system trust store.",
        examples=["/etc/gateway/upstream-ca.pem"],
    )
    server_name: str | None = Field(
        None,
        description="The name sent as SNI and verified in the certificate; default: the host "
        "of the URL (an IP address is matched against the certificate's IP addresses).",
        examples=["billing.internal"],
    )
    cert_file: str | None = Field(
        None, description="PEM client certificate chain (give `key_file` too)."
    )
    key_file: str | None = Field(None, description="PEM private key of `cert_file`.")
    insecure_skip_verify: bool = Field(
        False,
        description="`true`: the peer's certificate is not verified at all (logged as a "
        "warning at every start and reload). For tests only.",
    )

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both `cert_file` and `key_file`, or neither")
        return self


class ListenConfig(Model):
    """The main listener: proxied requests and the session endpoint. Read at start only."""

    host: str = Field("0.0.0.0", description="Address to bind (IPv4 or IPv6).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; `0` picks a free one.")
    tls: ListenerTlsConfig | None = Field(
        None, description="TLS on this listener (HTTPS); absent: plain HTTP."
    )


class AdminConfig(Model):
    """The admin listener: `/healthz`, `/readyz` and `/metrics`, never on the main listener.
    `admin: null` turns it off. Read at start only."""

    host: str = Field(
        "127.0.0.1",
        description="Address to bind. Nothing on it is authenticated: keep it private.",
    )
    port: int = Field(9901, ge=0, le=65535, description="TCP port; `0` picks a free one.")
    tls: ListenerTlsConfig | None = Field(
        None, description="TLS on the admin listener; absent: plain HTTP."
    )


class ForwardAuthConfig(Model):
    """The forward-auth (decision) listener for nginx `auth_request`, Traefik ForwardAuth and
    Envoy ext_authz: absent, there is none. It trusts the `X-Forwarded-*` / `X-Original-*`
    headers it is given, so only the front proxy may reach it. Read at start only."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(9902, ge=0, le=65535, description="TCP port; `0` picks a free one.")
    tls: ListenerTlsConfig | None = Field(
        None, description="TLS on the decision listener; absent: plain HTTP."
    )


class LogConfig(Model):
    """Event lines (start, reload, outages...) go to stderr; access lines to stdout in the json
    format, to stderr with the events in the console format."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of the event lines written."
    )
    format: Literal["json", "console"] | None = Field(
        None,
        description="`json` (one object per line) or `console` (for people); "
        "unset: console when stderr is a TTY, json otherwise.",
    )
    access: bool = Field(
        True,
        description="One access-log line per request ([fields](operations.md#logs); never a "
        "token).",
    )


class LimitsConfig(Model):
    """Request limits; a request over one is refused before anything reaches an upstream, and
    the offending value is never echoed. Client connections also have fixed timeouts (not
    configurable): a new connection's first request head must arrive within 30 s; an idle
    keep-alive connection is closed after 75 s; an answer that ends a connection whose client
    may still be sending is followed by a lingering close (what the client sends is read and
    dropped, at most 2 s between reads and 5 s in all); a connection closed with part of its
    answer still buffered for a client that takes none of it for 60 s is reset (nginx's
    `send_timeout`; a client that keeps reading, however slowly, is not cut off). An answer
    still streaming to a client that stopped reading is ended by the route's upstream
    `timeout`."""

    max_header_bytes: Size = Field(
        16 * 1024,
        gt=0,
        description="All request header fields together (names and values); more -> 431.",
    )
    max_header_count: int = Field(
        100,
        gt=0,
        description="Header fields in one request; more -> 431 (Envoy's default; gunicorn and "
        "http.server upstreams refuse more than 100).",
    )
    max_url_bytes: Size = Field(
        8 * 1024, gt=0, description="The request target (path and query string); longer -> 414."
    )
    max_body: Size = Field(
        10 * 1024**2,
        ge=0,
        description="Request body limit of every route without its own `max_body`; counted "
        "while streaming (chunked bodies too); more -> 413. `0` allows no body.",
    )
    max_in_flight: int = Field(
        10000,
        gt=0,
        description="Requests one process handles at once; beyond it -> 503 `overloaded`.",
    )


class RedisConfig(Model):
    """Optional. Absent: the token store, cache and revocations live in each process only.
    Present: shared by every replica (keys and formats: [redis.md](redis.md))."""

    url: str = Field(
        description="`redis://[user:password@]host:port/db`, `rediss://` (TLS), "
        "`unix:///path/to/socket`, or `redis+sentinel://host:port[,host:port]/service[/db]` "
        "(Sentinel). Put the password in `${...}` or use `url_file`.",
        examples=["redis://127.0.0.1:6379/0", "redis+sentinel://s1:26379,s2:26379/mymaster"],
    )
    key_prefix: str = Field(
        "gw:", description="Prepended to every key and channel the gateway uses."
    )
    cluster: bool = Field(False, description="Connect in Redis Cluster mode.")
    tls: ClientTlsConfig | None = Field(
        None,
        description="For a `rediss://` URL: the CA to trust (default: the system trust "
        "store), the name to verify (default: the URL's host; not with `cluster`), a client "
        "certificate (Redis `tls-auth-clients`). A certificate that does not verify makes "
        "Redis unavailable (503 for tokens only it could judge), never a 401.",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        return v

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> RedisConfig:
        if self.tls is not None:
            if not self.url.startswith("rediss://"):
                raise ValueError("`tls` applies to a rediss:// URL only")
            if self.cluster and self.tls.server_name is not None:
                raise ValueError("`tls.server_name` is not supported with `cluster: true`")
        return self


class StoreSource(Model):
    """Tokens kept in the token store: Redis with `redis:` (shared, and writable by issuers:
    [redis.md](redis.md)), else this process's memory. `gateway token issue` mints into it."""

    type: Literal["store"] = Field(description="`store`.")


class JwtSource(Model):
    """Local verification of JWS access tokens (RFC 9068) against the issuer's JWKS. Only
    tokens shaped as a JWS (three base64url parts) are judged; others go to the next source.
    `exp` and `iss` are required claims, and `aud` when `audience` is set."""

    type: Literal["jwt"] = Field(description="`jwt`.")
    jwks_url: str = Field(
        description="URL of the issuer's JSON Web Key Set; fetched when needed, again for an "
        "unknown `kid` (at most every 10 s) and hourly.",
        examples=["https://idp.example/.well-known/jwks.json"],
    )
    issuer: str = Field(description="Required value of the `iss` claim.")
    audience: str | tuple[str, ...] | None = Field(
        None,
        description="Accepted value(s) of the `aud` claim; a token must name one of them. "
        "Unset: any audience (a route's `resource` is still checked against `aud`).",
        examples=["my-api", ["my-api", "my-other-api"]],
    )
    algorithms: tuple[
        Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"], ...
    ] = Field(
        (
            "RS256",
            "ES256",
        ),
        description="Accepted `alg` values (asymmetric only; a key verifies only its own "
        "family, and only its declared `alg` when it has one).",
    )
    require_typ: bool = Field(
        False,
        description="`true`: only tokens whose header says `typ: at+jwt` (RFC 9068) are accepted.",
    )
    leeway: Duration = Field(30.0, description="Clock skew allowed on `exp`, `nbf` and `iat`.")
    timeout: Duration = Field(2.0, description="Timeout of a JWKS fetch.")
    tls: ClientTlsConfig | None = Field(
        None,
        description="TLS towards an `https://` `jwks_url`: the CA to trust (default: the "
        "system trust store), the name to verify, a client certificate. A certificate that "
        "does not verify is a source outage (503), never a 401.",
    )

    @model_validator(mode="after")
    def _tls_needs_https(self) -> JwtSource:
        _check_source_tls(self.tls, (self.jwks_url,))
        return self


class IntrospectionSource(Model):
    """Asks the authorization server about each token (RFC 7662), once per token and cache
    lifetime. A connect error, timeout, 5xx or a refusal of the gateway's own credentials
    makes the source unavailable (503), never the token invalid."""

    type: Literal["introspection"] = Field(description="`introspection`.")
    url: str = Field(
        description="The introspection endpoint (POST, form-encoded `token`).",
        examples=["https://idp.example/oauth2/introspect"],
    )
    client_id: str = Field(description="The gateway's client id at the authorization server.")
    client_secret: SecretStr | None = Field(
        None,
        description="The gateway's client secret; usually `client_secret_file` or `${NAME}`. "
        "Required unless `auth_method` is `tls_client_auth`.",
    )
    auth_method: Literal["client_secret_basic", "client_secret_post", "tls_client_auth"] = Field(
        "client_secret_basic",
        description="How the gateway authenticates: HTTP Basic, `client_id` and "
        "`client_secret` in the form body, or `tls_client_auth` (RFC 8705: the client "
        "certificate of `tls`, with `client_id` in the form body and no secret).",
    )
    timeout: Duration = Field(2.0, description="Timeout of one introspection call.")
    revocation_url: str | None = Field(
        None,
        description="RFC 7009 revocation endpoint, called (with retries, in the background) "
        "when a token is revoked through the gateway; unset: not called.",
    )
    tls: ClientTlsConfig | None = Field(
        None,
        description="TLS towards `https://` `url` and `revocation_url`: the CA to trust "
        "(default: the system trust store), the name to verify, a client certificate (for "
        "`tls_client_auth`, or an IdP that asks for one). A certificate that does not verify "
        "is a source outage (503), never a 401.",
    )

    @model_validator(mode="after")
    def _credentials(self) -> IntrospectionSource:
        urls = (self.url,) if self.revocation_url is None else (self.url, self.revocation_url)
        _check_source_tls(self.tls, urls)
        if self.auth_method == "tls_client_auth":
            if self.tls is None or self.tls.cert_file is None:
                raise ValueError("`tls_client_auth` needs `tls.cert_file` and `tls.key_file`")
            if self.client_secret is not None:
                raise ValueError("`tls_client_auth` sends no `client_secret`: remove it")
        elif self.client_secret is None:
            raise ValueError(f"`{self.auth_method}` needs `client_secret`")
        return self


def _check_source_tls(tls: ClientTlsConfig | None, urls: tuple[str, ...]) -> None:
    if tls is not None and not any(u.startswith("https://") for u in urls):
        raise ValueError("`tls` applies to https:// URLs only")


Source = Annotated[StoreSource | JwtSource | IntrospectionSource, Field(discriminator="type")]


class CacheConfig(Model):
    """Answers of the token sources are kept in process; with `redis:`, introspection answers
    and negative answers are shared in Redis too. Keyed by the token's SHA-256, never the
    token; a positive answer is never reused past the token's `exp`."""

    ttl: Duration = Field(300.0, description="How long a positive answer is reused.")
    negative_ttl: Duration = Field(
        10.0, description="How long an unknown / inactive / invalid answer is reused."
    )
    stale_if_error: Duration = Field(
        600.0,
        description="While the sources cannot be reached, a positive answer may be reused this "
        "long past `ttl` (but not while a configured `redis:` is down: revocations could not "
        "arrive).",
    )
    max_entries: int = Field(
        100_000,
        gt=0,
        description="Answers kept in process (per process; least recently used go first).",
    )


DEFAULT_GRANT_VALUES = {
    "authorization_code": "authorization_code",
    "code": "authorization_code",
    "implicit": "implicit",
    "token": "implicit",
    "client_credentials": "client_credentials",
    "password": "password",
    "refresh_token": "refresh_token",
}


class GrantConfig(Model):
    """How the grant that issued a token is read, for `routes[].grants`."""

    claim: str = Field(
        "grant_type",
        description="Field of the introspection answer, JWT claim or store record that names "
        "the grant (a store record falls back to its `grant_type` field).",
    )
    values: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_GRANT_VALUES),
        description="Claim value -> grant name (`authorization_code`, `implicit`, "
        "`client_credentials`, `password`, `refresh_token`, `unknown`). A value not listed, "
        "or no claim, is grant `unknown`. Replaces the default map entirely.",
        examples=[{"authorization_code": "authorization_code", "implicit": "implicit"}],
    )

    @field_validator("values")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted({g for g in v.values() if g not in GRANTS})
        if bad:
            raise ValueError(f"unknown grant name(s) {bad}; known: {sorted(GRANTS)}")
        return v


DpopAlgorithm = Literal[
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
    "Ed25519",
]


class DpopConfig(Model):
    """DPoP proofs (RFC 9449, [bound tokens](bound-tokens.md#dpop)): a token bound to a key
    (`cnf.jkt`) is accepted only with `Authorization: DPoP` and a fresh proof signed by that
    key. Bound tokens are checked with these settings (or their defaults) even when the block
    is absent; setting it also announces the algorithms in the resource metadata."""

    algorithms: tuple[DpopAlgorithm, ...] = Field(
        ("ES256", "RS256", "PS256", "EdDSA", "Ed25519"),
        min_length=1,
        description="Accepted proof `alg` values: asymmetric only (`none` and `HS*` never). "
        "`Ed25519` is RFC 9864's fully-specified name of EdDSA over Ed25519.",
    )
    max_age: Duration = Field(
        60.0,
        gt=0,
        description="How far in the past a proof's `iat` may be (and its `jti` is remembered "
        "this long); 5 s into the future are allowed for clock skew.",
    )
    nonce: bool = Field(
        False,
        description="`true`: proofs must carry a nonce the gateway issued (`DPoP-Nonce` header "
        "on every answer to a DPoP request; a proof without the current one -> 401 "
        "`use_dpop_nonce`).",
    )
    nonce_secret_file: str | None = Field(
        None,
        description="With `nonce`: a file holding a secret shared by every replica, so that a "
        "nonce one replica issued is accepted by the others (re-read when it changes). Unset: "
        "a random secret per process.",
        examples=["/etc/gateway/dpop-nonce"],
    )


_DEFAULT_DPOP = DpopConfig()


class MtlsConfig(Model):
    """Certificate-bound tokens (RFC 8705,
    [bound tokens](bound-tokens.md#certificate-bound-tokens)): a token with `cnf["x5t#S256"]`
    is accepted only from a client presenting that certificate."""

    cert_header: str = Field(
        "X-Forwarded-Client-Cert",
        min_length=1,
        description="Where a front proxy in `trusted_proxies` passes the client certificate: "
        "Envoy's `X-Forwarded-Client-Cert` (the `Hash=` of its last element), or a URL-encoded "
        "PEM (nginx `$ssl_client_escaped_cert`). Ignored from other peers.",
    )


class TokensConfig(Model):
    """Where tokens are read from in a request, and who vouches for them."""

    sources: tuple[Source, ...] = Field(
        (StoreSource(type="store"),),
        description="Asked in this order; the first that knows the token answers. A source "
        "that is unreachable makes an unknown token a 503, not a 401.",
    )
    cache: CacheConfig = Field(CacheConfig(), description="Caching of the sources' answers.")
    grant: GrantConfig = Field(GrantConfig(), description="Reading a token's grant.")
    query_param: bool = Field(
        True,
        description="Accept `?access_token=` at all (RFC 6750 2.3); routes can still refuse it "
        "with `query_token: false`.",
    )
    form_param: bool = Field(
        False,
        description="Accept `access_token` in an `application/x-www-form-urlencoded` POST body "
        "(RFC 6750 2.2); unless the route has `forward_token: true`, it is removed from the "
        "body sent upstream.",
    )
    dpop: DpopConfig | None = Field(
        None, description="DPoP proofs (RFC 9449); unset: the defaults, not announced."
    )
    mtls: MtlsConfig = Field(MtlsConfig(), description="Certificate-bound tokens (RFC 8705).")

    @property
    def dpop_settings(self) -> DpopConfig:
        """`dpop`, or its defaults (bound tokens are checked even without the block)."""
        return self.dpop if self.dpop is not None else _DEFAULT_DPOP


RATE_KEYS = ("client_id", "sub", "grant", "route", "ip")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*(s|m|h)\s*$")
_RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: str) -> tuple[int, float]:
    """`100/s` -> (100, 1.0); `5/m` -> (5, 60.0); `N` of at least 1."""
    m = _RATE.match(value)
    if m is None:
        raise ValueError(f"invalid rate {value!r}: use N/s, N/m or N/h (e.g. 100/s)")
    n = int(m.group(1))
    if n < 1:
        raise ValueError(f"invalid rate {value!r}: N must be at least 1")
    return n, _RATE_PERIODS[m.group(2)]


def _rate(v: str) -> str:
    parse_rate(v)
    return v.strip()


class RateLimitConfig(Model):
    """A named rate limit: one token bucket per distinct value of its `key`, refilled at
    `rate`, holding up to `burst` requests. Routes name it in `routes[].rate_limit`; with
    `redis:` the bucket is shared by every replica ([operations.md](operations.md#rate-limits))."""

    key: tuple[Literal["client_id", "sub", "grant", "route", "ip"], ...] = Field(
        min_length=1,
        description="What one bucket is kept per, any of: `client_id`, `sub`, `grant` (of the "
        "validated token, never an unverified claim), `route` (the route's name), `ip` (the "
        "peer, or the client named by `X-Forwarded-For` when the peer is in "
        "`trusted_proxies`). Only `ip` and `route` on `auth: public` routes.",
        examples=[["client_id"], ["sub", "route"], ["ip"]],
    )
    rate: str = Field(
        description="`N/s`, `N/m` or `N/h`: the steady rate the bucket refills at.",
        examples=["100/s", "600/m"],
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="The bucket's size: requests allowed at once from a full bucket. Unset: "
        "the rate's `N`.",
    )

    @field_validator("key")
    @classmethod
    def _unique_keys(
        cls, v: tuple[Literal["client_id", "sub", "grant", "route", "ip"], ...]
    ) -> tuple[Literal["client_id", "sub", "grant", "route", "ip"], ...]:
        if len(set(v)) != len(v):
            raise ValueError("a key part is listed twice")
        return v

    @field_validator("rate")
    @classmethod
    def _check_rate(cls, v: str) -> str:
        return _rate(v)

    @property
    def identity_keyed(self) -> bool:
        """Whether the key needs a validated token (client_id, sub or grant)."""
        return any(k in ("client_id", "sub", "grant") for k in self.key)


class RateOverrideConfig(Model):
    """An app's own `rate` and `burst` for a named rate limit (its other settings stay)."""

    rate: str | None = Field(
        None, description="`N/s`, `N/m` or `N/h`; unset: the policy's.", examples=["1000/s"]
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="The bucket's size; unset: this override's `N` when it sets `rate`, else "
        "the policy's `burst`.",
    )

    @field_validator("rate")
    @classmethod
    def _check_rate(cls, v: str | None) -> str | None:
        return _rate(v) if v is not None else v


class AppConfig(Model):
    """An application for `appsecret_proof`, found by the token's client_id
    ([answers.md](answers.md#appsecret_proof))."""

    client_id: str = Field(min_length=1, description="The client_id of the app's tokens.")
    secrets: tuple[SecretStr, ...] = Field(
        description="The app's secrets; any one may match (several = rotation). Empty strings "
        "are dropped, so `${OLD:-}` can stay in place; an app left with none is an error.",
        examples=[["${WEB_APP_SECRET}", "${WEB_APP_SECRET_OLD:-}"]],
    )
    proof_max_age: Duration = Field(
        300.0,
        description="With `appsecret_time`, how far from now (either direction) it may be.",
    )
    rate_limits: dict[str, RateOverrideConfig] = Field(
        default_factory=dict,
        description="Per-app overrides of named `rate_limits` (by policy name) for tokens of "
        "this client_id.",
        examples=[{"per_client": {"rate": "1000/s", "burst": 2000}}],
    )

    @field_validator("rate_limits")
    @classmethod
    def _known_policies(
        cls, v: dict[str, RateOverrideConfig], info: ValidationInfo
    ) -> dict[str, RateOverrideConfig]:
        _known_rate_limits(v, info)
        return v

    @field_validator("secrets", mode="before")
    @classmethod
    def _drop_empty(cls, v: object) -> object:
        if isinstance(v, list | tuple):
            v = [s for s in v if not (isinstance(s, str) and s == "")]
            if not v:
                raise ValueError("an app needs at least one non-empty secret")
        return v


class UpstreamConfig(Model):
    """A service the routes send requests to, by name. Give `url` or `targets`."""

    url: str | None = Field(
        None,
        description="`http://host[:port][/path]` or `https://...`: the one target. A path is "
        "prepended to every request path.",
        examples=["http://127.0.0.1:9000", "https://billing.internal:8443"],
    )
    targets: tuple[str, ...] | None = Field(
        None,
        description="Several URLs instead of `url`, all `http://` or all `https://`: "
        "round-robin, and a refused connection tries the next one.",
        examples=[["http://orders-1:8000", "http://orders-2:8000"]],
    )
    tls: ClientTlsConfig | None = Field(
        None,
        description="For `https://` targets: the CA to trust (default: the system trust store), "
        "the name to verify, a client certificate (upstream mTLS). A certificate that does "
        "not verify, or a failed handshake, is a 502 (reason `upstream_tls`), never a retry "
        "over plain HTTP. Only with `https://` targets.",
    )
    connect_timeout: Duration = Field(2.0, description="Connecting to a target; exceeded -> 504.")
    timeout: Duration = Field(
        30.0,
        description="Waiting for the answer's head, then for each piece of a streamed answer; "
        "exceeded -> 504 (or the connection is cut once the answer has begun).",
    )
    max_connections: int = Field(
        1024,
        gt=0,
        description="Connections per target; further requests wait for a free one.",
    )
    idle_timeout: Duration = Field(
        60.0, description="How long a pooled keep-alive connection may stay idle."
    )

    @model_validator(mode="after")
    def _one_of(self) -> UpstreamConfig:
        if (self.url is None) == (self.targets is None):
            raise ValueError("give exactly one of `url` or `targets`")
        if self.targets is not None and not self.targets:
            raise ValueError("`targets` cannot be empty")
        for t in self.all_targets:
            if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", t):
                raise ValueError(
                    f"target {t!r} must be an http:// or https:// URL (host[:port][/path])"
                )
        schemes = {t.partition(":")[0] for t in self.all_targets}
        if len(schemes) > 1:
            # a failover from an https target to an http one would be a retry over plain HTTP
            raise ValueError("targets must be all http:// or all https://")
        if self.tls is not None and schemes != {"https"}:
            raise ValueError("`tls` applies to https:// targets only")
        return self

    @property
    def https(self) -> bool:
        """Whether the targets are `https://` ones."""
        return self.all_targets[0].startswith("https://")

    @property
    def all_targets(self) -> tuple[str, ...]:
        return self.targets if self.targets is not None else (self.url or "",)


class RouteConfig(Model):
    """Routes are tried in file order; the first whose path, methods and host match wins; no
    match -> 404. Give exactly one of `path`, `path_prefix`, `path_regex`. Paths are matched
    case-sensitively, after [normalisation](answers.md#paths)."""

    name: str = Field(
        min_length=1, description="Unique name; in logs, metric labels and `gateway routes`."
    )
    path: str | None = Field(None, description="Exact path.", examples=["/status"])
    path_prefix: str | None = Field(
        None,
        description="Whole-segment prefix: `/v1/payments` (or `/v1/payments/`) matches "
        "`/v1/payments` and `/v1/payments/...`, never `/v1/paymentsX`.",
        examples=["/v1/payments"],
    )
    path_regex: str | None = Field(
        None,
        description="Python regular expression searched in the normalised path; anchor it.",
        examples=["^/v1/items/[0-9]+$"],
    )
    methods: tuple[str, ...] | None = Field(
        None,
        description="Methods this route matches (upper-cased); unset: all. Another method "
        "goes on to the next routes.",
        examples=[["GET", "HEAD"]],
    )
    host: str | None = Field(
        None,
        description="Match only this `Host` (compared without port, case-insensitively).",
        examples=["api.example.com"],
    )
    upstream: str = Field(description="Name of an entry of `upstreams`.")
    auth: Literal["public", "token"] = Field(
        "token", description="`token`: a valid access token is required; `public`: none is."
    )
    strip_prefix: str | None = Field(
        None,
        description="Removed (on a segment boundary) from the path sent upstream.",
        examples=["/v1"],
    )
    grants: tuple[str, ...] | None = Field(
        None,
        description="Grants whose tokens are allowed, among `authorization_code`, `implicit`, "
        "`client_credentials`, `password`, `refresh_token` and `unknown`; others -> 403 "
        "`insufficient_grant`. Unset: any grant.",
        examples=[["authorization_code"]],  # a code-only endpoint: implicit tokens refused
    )
    scopes: tuple[str, ...] = Field(
        (), description="Scopes the token must all have; else 403 `insufficient_scope`."
    )
    appsecret_proof: Literal["required", "optional", "off"] = Field(
        "off",
        description="`required`: every request must carry a valid proof; `optional`: a proof "
        'that is sent is checked; `off`: not checked. Quote `"off"`: YAML reads a bare off '
        "as false.",
    )
    query_token: bool = Field(
        True,
        description="`false`: a token in `?access_token=` is refused (400) on this route.",
    )
    forward_token: bool = Field(
        False,
        description="`true`: the `Authorization` header, appsecret_proof headers and "
        "credential query parameters go upstream; `false`: they are removed.",
    )
    preflight: Literal["pass", "check"] = Field(
        "check",
        description="`pass`: a CORS preflight (OPTIONS with `Origin` and "
        "`Access-Control-Request-Method`) goes upstream without a token; `check`: it is "
        "treated like any request.",
    )
    max_body: Size | None = Field(
        None, description="This route's body limit; unset: `limits.max_body`."
    )
    resource: str | None = Field(
        None,
        description="The `id` of an entry of `resources`: only tokens whose audience (`aud`) "
        "names it are accepted (else 401 `invalid_token`), and challenges carry its "
        "`resource_metadata`.",
        examples=["https://api.example.com/payments"],
    )
    sender_constraint: Literal["off", "dpop", "mtls", "any"] = Field(
        "off",
        description="`dpop`: only DPoP-bound tokens with a valid proof; `mtls`: only "
        "certificate-bound tokens from their certificate; `any`: either; `off`: any token (a "
        'bound token is still checked by its binding). Quote `"off"`.',
    )
    rate_limit: str | tuple[str, ...] | None = Field(
        None,
        description="Name(s) of `rate_limits` applied to this route, after authentication and "
        "authorization; all must allow, else 429 `rate_limited`.",
        examples=["per_client", ["per_client", "per_ip"]],
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        out = tuple(m.upper() for m in v)
        for m in out:
            if not HTTP_METHOD.match(m):
                raise ValueError(f"{m!r} is not an HTTP method")
        return out

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return v.lower() if v else v

    @field_validator("path", "path_prefix", "strip_prefix")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        return _request_path(v)

    @field_validator("appsecret_proof", "sender_constraint", mode="before")
    @classmethod
    def _bare_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML reads an unquoted `off` as false

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    @field_validator("grants")
    @classmethod
    def _grants(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            bad = [g for g in v if g not in GRANTS]
            if bad:
                raise ValueError(f"unknown grant(s) {bad}; known: {sorted(GRANTS)}")
        return v

    @field_validator("rate_limit")
    @classmethod
    def _rate_limits_exist(
        cls, v: str | tuple[str, ...] | None, info: ValidationInfo
    ) -> str | tuple[str, ...] | None:
        if v is None:
            return v
        names = (v,) if isinstance(v, str) else v
        if not names:
            raise ValueError("name at least one policy of `rate_limits`")
        if len(set(names)) != len(names):
            raise ValueError("a policy is listed twice")
        _known_rate_limits(names, info)
        return v

    @property
    def rate_limits(self) -> tuple[str, ...]:
        """The names in `rate_limit`, as a tuple."""
        v = self.rate_limit
        return () if v is None else (v,) if isinstance(v, str) else v

    @field_validator("upstream")
    @classmethod
    def _upstream_exists(cls, v: str, info: ValidationInfo) -> str:
        names = (info.context or {}).get("upstreams")
        if names is not None and v not in names:
            raise ValueError(f"no upstream named {v!r}")
        return v

    @model_validator(mode="after")
    def _one_path(self) -> RouteConfig:
        given = [k for k in ("path", "path_prefix", "path_regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `path`, `path_prefix`, `path_regex`")
        if self.auth == "public" and (
            self.grants
            or self.scopes
            or self.appsecret_proof == "required"
            or self.resource is not None
            or self.sender_constraint != "off"
        ):
            raise ValueError(
                "a public route cannot require grants, scopes, appsecret_proof, a resource "
                "or a sender_constraint"
            )
        return self

    @model_validator(mode="after")
    def _public_rate_keys(self, info: ValidationInfo) -> RouteConfig:
        if self.auth != "public":
            return self
        policies = (info.context or {}).get("rate_limit_keys") or {}
        for name in self.rate_limits:
            keys = policies.get(name) or ()
            wrong = [k for k in keys if k in ("client_id", "sub", "grant")]
            if wrong:
                raise ValueError(
                    f"rate_limit {name!r} is keyed by {wrong}, which a public route (no token) "
                    "does not have; key it by `ip` or `route`"
                )
        return self


def _known_rate_limits(names: Iterable[str], info: ValidationInfo) -> None:
    known = (info.context or {}).get("rate_limits")
    if known is None:
        return
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"no rate_limits policy named {', '.join(map(repr, unknown))}"
            + (f"; known: {sorted(known)}" if known else "")
        )


class ResourceConfig(Model):
    """A protected resource the gateway fronts (RFC 8707 / RFC 9728,
    [bound tokens](bound-tokens.md#resources-and-audience)): routes name it with `resource`,
    and its metadata document is served at the well-known URL derived from its `id`."""

    id: str = Field(
        description="The resource identifier: an absolute `https://` (or `http://`) URL without "
        "query or fragment; the `resource` a client asks tokens for and the tokens' `aud`. Its "
        "path gives the metadata URL: `/.well-known/oauth-protected-resource` + path.",
        examples=["https://api.example.com/payments"],
    )
    authorization_servers: tuple[str, ...] = Field(
        min_length=1,
        description="Issuer URLs of the authorization servers that issue tokens for it.",
        examples=[["https://idp.example/"]],
    )
    scopes_supported: tuple[str, ...] | None = Field(
        None,
        description="Scopes announced in the metadata; unset: the scopes its routes require.",
        examples=[["payments", "payments.read"]],
    )
    documentation: str | None = Field(
        None,
        description="A page for developers (`resource_documentation` in the metadata).",
        examples=["https://docs.example.com/payments"],
    )

    @field_validator("id")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", v):
            raise ValueError("must be an absolute http(s) URL without query or fragment")
        return v

    @property
    def metadata_path(self) -> str:
        """RFC 9728 section 3.1: the well-known path, with the id's path appended."""
        path = re.sub(r"^https?://[^/]+", "", self.id)
        return "/.well-known/oauth-protected-resource" + (path if path != "/" else "")

    @property
    def metadata_url(self) -> str:
        """The metadata document's absolute URL (`resource_metadata` in challenges)."""
        origin = re.match(r"^https?://[^/]+", self.id)
        return (origin.group(0) if origin else "") + self.metadata_path


def _request_path(v: str | None) -> str | None:
    """A path matched against request paths: it must start with `/` and survive the
    normalisation requests get (docs/configuration.md, matching), or no request could match."""
    if v is None:
        return None
    if not v.startswith("/"):
        raise ValueError("must start with '/'")
    try:
        normalize_path(v)
    except BadHttpRequestError as exc:
        raise ValueError(f"cannot be normalised ({exc.reason})") from None
    return v


def _network(v: object) -> object:
    if isinstance(v, str):
        try:
            return ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or CIDR") from None
    return v


class TracingConfig(Model):
    """OpenTelemetry tracing ([operations.md](operations.md#tracing)). With or without this
    block, a valid W3C `traceparent` / `tracestate` is passed upstream and an invalid one
    dropped; with it, every request has a trace context (a request without one starts a new
    trace, shown as `trace_id` in the access log), and sampled requests are recorded as spans
    and exported over OTLP/HTTP in the background."""

    otlp_endpoint: str | None = Field(
        None,
        description="Base URL of an OTLP/HTTP collector (`/v1/traces` is added unless the URL "
        "ends with it); unset: no spans are recorded or exported, trace contexts are still "
        "started and passed upstream.",
        examples=["http://otel-collector:4318"],
    )
    service_name: str = Field(
        "oauth-gateway", min_length=1, description="The `service.name` of the spans."
    )
    sample_ratio: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of new traces that are recorded (by trace-id, as OpenTelemetry's "
        "TraceIdRatioBased); a request whose `traceparent` says sampled is always recorded, "
        "one that says not sampled never is.",
    )
    max_queue_size: int = Field(
        2048,
        gt=0,
        description="Spans waiting for export; a span that finds the queue full is dropped and "
        "counted in `gateway_spans_dropped_total` (a slow collector never holds a request).",
    )
    export_timeout: Duration = Field(
        10.0,
        gt=0,
        description="How long one export (with its retries) may take; a batch the collector "
        "has not taken by then is dropped and counted.",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v


class GatewayConfig(Model):
    """The whole file."""

    listen: ListenConfig = Field(ListenConfig(), description="The main listener.")
    admin: AdminConfig | None = Field(
        AdminConfig(), description="The admin listener; `null`: none."
    )
    forward_auth: ForwardAuthConfig | None = Field(
        None, description="The forward-auth (decision) listener; unset: none."
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="Processes sharing the listeners (SO_REUSEPORT); `auto`: one per core. "
        "Read at start only.",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="Addresses or CIDRs of proxies in front of the gateway: their "
        "`X-Forwarded-For` / `-Proto` / `-Host` are kept and appended to; from anyone else "
        "they are replaced.",
        examples=[["10.0.0.0/8", "192.168.1.10"]],
    )
    shutdown_timeout: Duration = Field(
        30.0,
        description="On SIGTERM / SIGINT, how long in-flight requests may take to finish.",
    )
    log: LogConfig = Field(LogConfig(), description="Logging.")
    tracing: TracingConfig | None = Field(
        None,
        description="OpenTelemetry tracing; unset: W3C trace context is passed upstream, "
        "nothing is recorded.",
    )
    limits: LimitsConfig = Field(LimitsConfig(), description="Request limits.")
    redis: RedisConfig | None = Field(
        None, description="Redis shared by replicas; unset: in-process store and cache only."
    )
    tokens: TokensConfig = Field(TokensConfig(), description="Token reading and validation.")
    apps: tuple[AppConfig, ...] = Field(
        (), description="Applications for `appsecret_proof`, keyed by the token's client_id."
    )
    upstreams: dict[str, UpstreamConfig] = Field(
        default_factory=dict, description="Upstream services by name, for `routes[].upstream`."
    )
    session_path: str | None = Field(
        "/oauth20/access-token",
        description="Path of the session endpoint (GET: the token's details, DELETE: revoke "
        "it), answered by the gateway itself before any route; `null`: no session endpoint.",
    )
    realm: str = Field("gateway", description="The `realm` of `WWW-Authenticate: Bearer`.")
    resources: tuple[ResourceConfig, ...] = Field(
        (),
        description="Protected resources (RFC 8707 identifiers) for `routes[].resource`; each "
        "one's RFC 9728 metadata is served on the main listener.",
    )
    rate_limits: dict[str, RateLimitConfig] = Field(
        default_factory=dict,
        description="Named rate limits for `routes[].rate_limit` and `apps[].rate_limits` "
        "([operations.md](operations.md#rate-limits)).",
        examples=[{"per_client": {"key": ["client_id"], "rate": "100/s", "burst": 200}}],
    )
    routes: tuple[RouteConfig, ...] = Field(
        description="The routes, in match order; at least one.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(_network(x)) for x in v)

    @field_validator("rate_limits")
    @classmethod
    def _policy_names(cls, v: dict[str, RateLimitConfig]) -> dict[str, RateLimitConfig]:
        bad = sorted(n for n in v if not _POLICY_NAME.match(n))
        if bad:
            raise ValueError(
                f"policy name(s) {bad}: 1-64 of A-Z a-z 0-9 _ . - (they appear in headers)"
            )
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    @field_validator("session_path")
    @classmethod
    def _session(cls, v: str | None) -> str | None:
        path = _request_path(v)
        if path is not None and normalize_path(path) != path:
            raise ValueError(f"must be written normalised: {normalize_path(path)!r}")
        return path

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, v: tuple[AppConfig, ...]) -> tuple[AppConfig, ...]:
        seen = [a.client_id for a in v]
        dup = sorted({c for c in seen if seen.count(c) > 1})
        if dup:
            raise ValueError(f"client_id listed twice: {dup}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _routes_given(cls, data: object) -> object:
        """An absent or null `routes` reaches the rule below (and its message) as `[]`."""
        if isinstance(data, dict) and data.get("routes") is None:
            return {**data, "routes": ()}
        return data

    @field_validator("routes")
    @classmethod
    def _unique_routes(cls, v: tuple[RouteConfig, ...]) -> tuple[RouteConfig, ...]:
        if not v:
            # an empty file (a truncated ConfigMap) must not silently stop every route
            raise ValueError("at least one route is required")
        seen = [r.name for r in v]
        dup = sorted({c for c in seen if seen.count(c) > 1})
        if dup:
            raise ValueError(f"route name used twice: {dup}")
        return v

    @field_validator("resources")
    @classmethod
    def _unique_resources(cls, v: tuple[ResourceConfig, ...]) -> tuple[ResourceConfig, ...]:
        paths = [r.metadata_path for r in v]
        dup = sorted({r.id for r in v if paths.count(r.metadata_path) > 1})
        if dup:
            raise ValueError(f"resources with the same metadata URL path: {dup}")
        return v

    @model_validator(mode="after")
    def _route_resources(self) -> GatewayConfig:
        known = {r.id for r in self.resources}
        for i, route in enumerate(self.routes):
            if route.resource is not None and route.resource not in known:
                raise ValueError(
                    f"routes[{i}].resource: no entry of `resources` has the id {route.resource!r}"
                )
        return self

    @property
    def workers_count(self) -> int:
        import os

        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
