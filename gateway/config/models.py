"""The configuration file as immutable pydantic models; keys are exactly SPEC.md section 2."""

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
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one.")


class AdminConfig(Model):
    host: str = Field(
        "127.0.0.1", description="Admin listener address (/healthz /readyz /metrics)."
    )
    port: int = Field(9901, ge=0, le=65535)


class ForwardAuthConfig(Model):
    host: str = Field("127.0.0.1", description="Forward-auth (decision) listener address.")
    port: int = Field(9902, ge=0, le=65535)


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] | None = Field(
        None, description="json | console; default: console on a TTY, json otherwise."
    )
    access: bool = Field(True, description="One access-log line per request.")


class LimitsConfig(Model):
    max_header_bytes: Size = Field(16 * 1024, gt=0, description="All request headers -> 431.")
    max_header_count: int = Field(
        100,
        gt=0,
        description="Header fields in one request; more -> 431 (Envoy's default; gunicorn and "
        "http.server upstreams refuse more than 100).",
    )
    max_url_bytes: Size = Field(8 * 1024, gt=0, description="Request target -> 414.")
    max_body: Size = Field(10 * 1024**2, ge=0, description="Default per-route body limit -> 413.")
    max_in_flight: int = Field(10000, gt=0, description="Concurrent requests; beyond -> 503.")


class RedisConfig(Model):
    url: str = Field(description="redis://, rediss://, redis+sentinel:// or a cluster URL.")
    key_prefix: str = "gw:"
    cluster: bool = Field(False, description="Extension: connect in Redis Cluster mode.")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        return v


class StoreSource(Model):
    type: Literal["store"]


class JwtSource(Model):
    type: Literal["jwt"]
    jwks_url: str
    issuer: str
    audience: str | tuple[str, ...]
    algorithms: tuple[
        Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"], ...
    ] = (
        "RS256",
        "ES256",
    )
    require_typ: bool = False
    leeway: Duration = Field(30.0, description="Extension: clock skew allowed on exp/nbf/iat.")
    timeout: Duration = Field(2.0, description="Extension: JWKS fetch timeout.")


class IntrospectionSource(Model):
    type: Literal["introspection"]
    url: str
    client_id: str
    client_secret: SecretStr
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    timeout: Duration = 2.0
    revocation_url: str | None = None


Source = Annotated[StoreSource | JwtSource | IntrospectionSource, Field(discriminator="type")]


class CacheConfig(Model):
    ttl: Duration = 300.0
    negative_ttl: Duration = 10.0
    stale_if_error: Duration = 600.0
    max_entries: int = Field(100_000, gt=0)


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
    claim: str = "grant_type"
    values: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_GRANT_VALUES))

    @field_validator("values")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted({g for g in v.values() if g not in GRANTS})
        if bad:
            raise ValueError(f"unknown grant name(s) {bad}; known: {sorted(GRANTS)}")
        return v


class TokensConfig(Model):
    sources: tuple[Source, ...] = (StoreSource(type="store"),)
    cache: CacheConfig = CacheConfig()
    grant: GrantConfig = GrantConfig()
    query_param: bool = True
    form_param: bool = False


class AppConfig(Model):
    client_id: str = Field(min_length=1)
    secrets: tuple[SecretStr, ...]
    proof_max_age: Duration = 300.0

    @field_validator("secrets", mode="before")
    @classmethod
    def _drop_empty(cls, v: object) -> object:
        if isinstance(v, list | tuple):
            v = [s for s in v if not (isinstance(s, str) and s == "")]
            if not v:
                raise ValueError("an app needs at least one non-empty secret")
        return v


class UpstreamConfig(Model):
    url: str | None = None
    targets: tuple[str, ...] | None = None
    connect_timeout: Duration = 2.0
    timeout: Duration = 30.0
    max_connections: int = Field(1024, gt=0, description="Extension: per target.")
    idle_timeout: Duration = Field(60.0, description="Extension: pooled keep-alive lifetime.")

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
    name: str = Field(min_length=1)
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] | None = None
    host: str | None = None
    upstream: str
    auth: Literal["public", "token"] = "token"
    strip_prefix: str | None = None
    grants: tuple[str, ...] | None = None
    scopes: tuple[str, ...] = ()
    appsecret_proof: Literal["required", "optional", "off"] = "off"
    query_token: bool = True
    forward_token: bool = False
    preflight: Literal["pass", "check"] = "check"
    max_body: Size | None = None

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
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

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


def _network(v: object) -> object:
    if isinstance(v, str):
        try:
            return ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or CIDR") from None
    return v


class GatewayConfig(Model):
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig | None = AdminConfig()
    forward_auth: ForwardAuthConfig | None = None
    workers: int | Literal["auto"] = 1
    trusted_proxies: tuple[str, ...] = ()
    shutdown_timeout: Duration = 30.0
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    redis: RedisConfig | None = None
    tokens: TokensConfig = TokensConfig()
    apps: tuple[AppConfig, ...] = ()
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    session_path: str | None = "/oauth20/access-token"
    realm: str = Field("gateway", description="Extension: realm of WWW-Authenticate.")
    routes: tuple[RouteConfig, ...] = ()

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
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, v: tuple[AppConfig, ...]) -> tuple[AppConfig, ...]:
        seen = [a.client_id for a in v]
        dup = sorted({c for c in seen if seen.count(c) > 1})
        if dup:
            raise ValueError(f"client_id listed twice: {dup}")
        return v

    @field_validator("routes")
    @classmethod
    def _unique_routes(cls, v: tuple[RouteConfig, ...]) -> tuple[RouteConfig, ...]:
        seen = [r.name for r in v]
        dup = sorted({c for c in seen if seen.count(c) > 1})
        if dup:
            raise ValueError(f"route name used twice: {dup}")
        return v

    @property
    def workers_count(self) -> int:
        import os

        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)
