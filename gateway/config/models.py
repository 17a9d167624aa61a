"""The configuration file as immutable pydantic models.

Every field carries its description: `gateway config-reference` prints the reference
(docs/configuration.md) from these models, so a key, default or description changes here only.
"""

from __future__ import annotations

import ipaddress
import re
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


class ListenConfig(Model):
    """The main listener: proxied requests and the session endpoint. Read at start only."""

    host: str = Field("0.0.0.0", description="Address to bind (IPv4 or IPv6).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; `0` picks a free one.")


class AdminConfig(Model):
    """The admin listener: `/healthz`, `/readyz` and `/metrics`, never on the main listener.
    `admin: null` turns it off. Read at start only."""

    host: str = Field(
        "127.0.0.1",
        description="Address to bind. Nothing on it is authenticated: keep it private.",
    )
    port: int = Field(9901, ge=0, le=65535, description="TCP port; `0` picks a free one.")


class ForwardAuthConfig(Model):
    """The forward-auth (decision) listener for nginx `auth_request`, Traefik ForwardAuth and
    Envoy ext_authz: absent, there is none. It trusts the `X-Forwarded-*` / `X-Original-*`
    headers it is given, so only the front proxy may reach it. Read at start only."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(9902, ge=0, le=65535, description="TCP port; `0` picks a free one.")


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
    the offending value is never echoed."""

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

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        return v


class StoreSource(Model):
    """Tokens kept in the token store: Redis with `redis:` (shared, and writable by issuers:
    [redis.md](redis.md)), else this process's memory. `gateway token issue` mints into it."""

    type: Literal["store"] = Field(description="`store`.")


class JwtSource(Model):
    """Local verification of JWS access tokens (RFC 9068) against the issuer's JWKS. Only
    tokens shaped as a JWS (three base64url parts) are judged; others go to the next source.
    `exp`, `iss` and `aud` are required claims."""

    type: Literal["jwt"] = Field(description="`jwt`.")
    jwks_url: str = Field(
        description="URL of the issuer's JSON Web Key Set; fetched when needed, again for an "
        "unknown `kid` (at most every 10 s) and hourly.",
        examples=["https://idp.example/.well-known/jwks.json"],
    )
    issuer: str = Field(description="Required value of the `iss` claim.")
    audience: str | tuple[str, ...] = Field(
        description="Accepted value(s) of the `aud` claim; a token must name one of them.",
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
    client_secret: SecretStr = Field(
        description="The gateway's client secret; usually `client_secret_file` or `${NAME}`."
    )
    auth_method: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic",
        description="How the gateway authenticates: HTTP Basic, or `client_id` and "
        "`client_secret` in the form body.",
    )
    timeout: Duration = Field(2.0, description="Timeout of one introspection call.")
    revocation_url: str | None = Field(
        None,
        description="RFC 7009 revocation endpoint, called (with retries, in the background) "
        "when a token is revoked through the gateway; unset: not called.",
    )


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
        description="`http://host[:port][/path]`: the one target. A path is prepended to every "
        "request path.",
        examples=["http://127.0.0.1:9000"],
    )
    targets: tuple[str, ...] | None = Field(
        None,
        description="Several `http://` URLs instead of `url`: round-robin, and a refused "
        "connection tries the next one.",
        examples=[["http://orders-1:8000", "http://orders-2:8000"]],
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
            if not re.match(r"^http://[^/?#\s]+(/[^?#\s]*)?$", t):
                raise ValueError(f"target {t!r} must be an http:// URL (host[:port][/path])")
        return self

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

    @field_validator("appsecret_proof", mode="before")
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
            self.grants or self.scopes or self.appsecret_proof == "required"
        ):
            raise ValueError("a public route cannot require grants, scopes or appsecret_proof")
        return self


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
    routes: tuple[RouteConfig, ...] = Field(
        description="The routes, in match order; at least one.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(_network(x)) for x in v)

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

    @property
    def workers_count(self) -> int:
        import os

        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
