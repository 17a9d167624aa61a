"""The compiled route table (SPEC section 3): first match in file order wins.

Exact paths and segment prefixes are dict look-ups; regex routes run only when they could win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from gateway.authz import SENDER_CONSTRAINTS, SENDER_OFF, AuthPolicy
from gateway.config.models import (
    GatewayConfig,
    ResourceConfig,
    RouteConfig,
    TokensConfig,
)
from gateway.extract import ExtractPolicy
from gateway.http.wire import Challenge, dpop_challenge
from gateway.normalize import normalize_path
from gateway.ratelimit.policy import RoutePolicies


def normalize_host(host: str | None) -> str | None:
    """`API.example.com.:8443` -> `api.example.com`; `[::1]:80` -> `::1`; empty -> None."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".") or None


def dpop_algs(tokens: TokensConfig) -> str:
    """The `algs="..."` parameter of DPoP challenges (RFC 9449 7.1)."""
    return 'algs="' + " ".join(tokens.dpop_settings.algorithms) + '"'


def _challenges(
    rc: RouteConfig, tokens: TokensConfig, resources: dict[str, ResourceConfig]
) -> tuple[Challenge | None, Challenge]:
    """The route's challenge, and the one of a request that used the DPoP scheme."""
    algs = dpop_algs(tokens)
    resource = resources.get(rc.resource) if rc.resource is not None else None
    params = f', resource_metadata="{resource.metadata_url}"' if resource is not None else ""
    scope = " ".join(rc.scopes) if resource is not None else ""
    sender = rc.sender_constraint
    if sender == "dpop":
        return Challenge(False, algs, True, params, scope), Challenge(
            False, algs, True, params, scope
        )
    if sender == "any":
        route = Challenge(True, algs, False, params, scope)
        return route, route.with_dpop_errors(algs)
    if resource is None:
        return None, dpop_challenge(algs)
    route = Challenge(True, None, False, params, scope)
    return route, route.with_dpop_errors(algs)


def session_policy(tokens: TokensConfig) -> AuthPolicy:
    """The session endpoint's token policy: tokens where the config accepts them at all, no
    grant, scope or proof requirement."""
    return AuthPolicy(
        extract=ExtractPolicy(query_allowed=tokens.query_param, form_allowed=tokens.form_param),
        grants=None,
        scopes=(),
        required_scopes=frozenset(),
        appsecret_proof="off",
        preflight_pass=False,
        strip_form_token=True,
        dpop_challenge=dpop_challenge(dpop_algs(tokens)),
    )


def _auth_policy(
    rc: RouteConfig, tokens: TokensConfig, resources: dict[str, ResourceConfig]
) -> AuthPolicy | None:
    if rc.auth != "token":
        return None
    sender = SENDER_CONSTRAINTS[rc.sender_constraint]
    challenge, dpop = _challenges(rc, tokens, resources)
    return AuthPolicy(
        extract=ExtractPolicy(
            query_allowed=tokens.query_param and rc.query_token, form_allowed=tokens.form_param
        ),
        grants=frozenset(rc.grants) if rc.grants is not None else None,
        scopes=rc.scopes,
        required_scopes=frozenset(rc.scopes),
        appsecret_proof=rc.appsecret_proof,
        preflight_pass=rc.preflight == "pass",
        strip_form_token=not rc.forward_token,
        resource=rc.resource,
        sender=sender,
        bound=rc.resource is not None or sender != SENDER_OFF,
        challenge=challenge,
        dpop_challenge=dpop,
    )


@dataclass(slots=True, frozen=True)
class Route:
    """One route, compiled once from its (validated) RouteConfig: the matcher, and the policies
    of the stages, each in the form the request path reads (`auth` None: a public route)."""

    name: str
    index: int
    kind: Literal["exact", "prefix", "regex"]
    matcher: str  # the normalised path or prefix, or the regex as written
    methods: frozenset[str] | None
    host: str | None
    auth: AuthPolicy | None  # the authenticate stage's policy; None = `auth: public`
    upstream: str  # the forward stage's: where, how the path is rewritten, what goes along
    strip_prefix: str | None
    forward_token: bool
    max_body: int
    config: RouteConfig
    limits: RoutePolicies | None = None  # the route's rate limits; None: none

    @classmethod
    def from_config(
        cls,
        rc: RouteConfig,
        index: int,
        default_max_body: int,
        tokens: TokensConfig,
        resources: dict[str, ResourceConfig] | None = None,
        limits: RoutePolicies | None = None,
    ) -> Route:
        """Compile `routes[index]` (validated already: its paths survive normalisation)."""
        kind: Literal["exact", "prefix", "regex"]
        if rc.path is not None:
            kind, matcher = "exact", normalize_path(rc.path)
        elif rc.path_prefix is not None:
            kind, matcher = "prefix", normalize_path(rc.path_prefix)
        else:
            kind, matcher = "regex", rc.path_regex or ""
        strip = rc.strip_prefix
        return cls(
            name=rc.name,
            index=index,
            kind=kind,
            matcher=matcher,
            methods=frozenset(rc.methods) if rc.methods is not None else None,
            host=normalize_host(rc.host),
            auth=_auth_policy(rc, tokens, resources or {}),
            upstream=rc.upstream,
            strip_prefix=normalize_path(strip) if strip else None,
            forward_token=rc.forward_token,
            max_body=rc.max_body if rc.max_body is not None else default_max_body,
            config=rc,
            limits=limits,
        )

    def accepts(self, method: str, host: str | None) -> bool:
        """Whether the method and (normalised) host filters let the request through."""
        if self.methods is not None and method not in self.methods:
            return False
        return self.host is None or self.host == host

    def upstream_path(self, path: str) -> str:
        """Apply `strip_prefix` on a segment boundary; the result always starts with `/`."""
        strip = self.strip_prefix
        if strip is None:
            return path
        base = strip.rstrip("/")
        if not base:
            return path
        if path == base or path == base + "/":
            return "/"
        if path.startswith(base) and path[len(base)] == "/":
            return path[len(base) :]
        return path


class RouteTable:
    """All routes in file order, with look-up tables built once."""

    __slots__ = ("_exact", "_has_host", "_prefix", "_regex_by_head", "_regex_other", "routes")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        exact: dict[str, list[int]] = {}
        prefix: dict[str, list[int]] = {}
        by_head: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        other: list[tuple[int, re.Pattern[str]]] = []
        for r in routes:
            if r.kind == "exact":
                exact.setdefault(r.matcher, []).append(r.index)
            elif r.kind == "prefix":
                prefix.setdefault(r.matcher.rstrip("/"), []).append(r.index)
            else:
                head = _regex_head(r.matcher)
                entry = (r.index, re.compile(r.matcher))
                (by_head.setdefault(head, []) if head else other).append(entry)
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._prefix = {k: tuple(v) for k, v in prefix.items()}
        self._regex_by_head = {k: tuple(v) for k, v in by_head.items()}
        self._regex_other = tuple(other)
        self._has_host = any(r.host is not None for r in routes)

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> RouteTable:
        """Compile `cfg.routes` (the config model has validated them)."""
        limit, tokens = cfg.limits.max_body, cfg.tokens
        resources = {r.id: r for r in cfg.resources}
        return cls(
            tuple(
                Route.from_config(
                    rc,
                    i,
                    limit,
                    tokens,
                    resources,
                    RoutePolicies.for_route(rc.name, rc.rate_limits, cfg)
                    if rc.rate_limits
                    else None,
                )
                for i, rc in enumerate(cfg.routes)
            )
        )

    def match(self, method: str, host: str | None, path: str) -> Route | None:
        """First route (file order) matching the normalised path, the method and the Host header.

        `path_regex` routes use `re.search` on the normalised path, so anchor them (`^...$`).
        """
        host = normalize_host(host) if self._has_host else None
        best = len(self.routes)
        found = self._exact.get(path)
        if found is not None:
            best = self._first(found, best, method, host)
        if self._prefix:
            best = self._best_prefix(path, best, method, host)
        if self._regex_by_head and best > 0:
            cut = path.find("/", 1)
            if cut != -1 and (found_re := self._regex_by_head.get(path[: cut + 1])) is not None:
                best = self._first_regex(found_re, best, method, host, path)
        if self._regex_other and best > 0:
            best = self._first_regex(self._regex_other, best, method, host, path)
        return self.routes[best] if best < len(self.routes) else None

    def _best_prefix(self, path: str, best: int, method: str, host: str | None) -> int:
        """Look up each segment prefix of `path` (`""` for `/`, `/a`, `/a/b`...): O(depth)."""
        prefix = self._prefix
        end = 0
        while best > 0 and end != -1:
            found = prefix.get(path[:end])
            if found is not None:
                best = self._first(found, best, method, host)
            end = path.find("/", end + 1)
        if best > 0 and not path.endswith("/") and (found := prefix.get(path)) is not None:
            best = self._first(found, best, method, host)
        return best

    def _first(self, indexes: tuple[int, ...], below: int, method: str, host: str | None) -> int:
        """The first index under `below` whose filters accept the request, else `below`."""
        for index in indexes:
            if index >= below:
                break
            if self.routes[index].accepts(method, host):
                return index
        return below

    def _first_regex(
        self,
        patterns: tuple[tuple[int, re.Pattern[str]], ...],
        below: int,
        method: str,
        host: str | None,
        path: str,
    ) -> int:
        """Like `_first` for regex routes: each pattern runs only if its route could win."""
        for index, pattern in patterns:
            if index >= below:
                break
            if self.routes[index].accepts(method, host) and pattern.search(path):
                return index
        return below


_REGEX_META: Final = frozenset(".^$*+?{}[]\\|()")


def _regex_head(pattern: str) -> str | None:
    """The first path segment every match must start with (`^/v1/x.*` -> `/v1/`), else None.

    Used to skip regex routes that cannot match; anything unusual (`|`, no `^/`) gives None.
    """
    if not pattern.startswith("^/") or "|" in pattern:
        return None
    end = 2
    while end < len(pattern) and pattern[end] not in _REGEX_META:
        end += 1
    literal = pattern[1:end]
    if end < len(pattern) and pattern[end] in "*+?{":
        literal = literal[:-1]  # a quantifier makes the last literal character optional
    cut = literal.find("/", 1)
    return literal[: cut + 1] if cut != -1 else None


def route_for(table: RouteTable, method: str, host: str | None, raw_path: str) -> Route | None:
    """Normalise a client path, then match it: what Pipeline.handle does (it keeps the
    normalised path for the upstream, so it calls the two steps itself)."""
    return table.match(method, host, normalize_path(raw_path))


def describe_route(route: Route) -> str:
    """One `gateway routes` line: order, name, matcher, filters, upstream and auth policy."""
    methods = ",".join(sorted(route.methods)) if route.methods is not None else "*"
    parts = [
        f"{route.index + 1:>3}. {route.name}",
        f"{route.kind} {route.matcher}",
        f"methods={methods}",
        f"host={route.host or '*'}",
        f"-> {route.upstream}",
    ]
    if route.strip_prefix:
        parts.append(f"strip_prefix={route.strip_prefix}")
    parts.append(_describe_policy(route))
    return "  ".join(parts)


def _describe_policy(route: Route) -> str:
    auth = route.auth
    if auth is None:
        policy = "public"
    else:
        grants = ",".join(sorted(auth.grants)) if auth.grants is not None else "*"
        scopes = ",".join(auth.scopes) or "-"
        policy = (
            f"token grants={grants} scopes={scopes} proof={auth.appsecret_proof} "
            f"query_token={_yn(route.config.query_token)} "
            f"preflight={'pass' if auth.preflight_pass else 'check'}"
        )
        if auth.resource is not None:
            policy += f" resource={auth.resource}"
        if route.config.sender_constraint != "off":
            policy += f" sender_constraint={route.config.sender_constraint}"
    limits = route.config.rate_limits
    rate = f" rate_limit={','.join(limits)}" if limits else ""
    return f"{policy} forward_token={_yn(route.forward_token)} max_body={route.max_body}{rate}"


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def describe_routes(table: RouteTable) -> list[str]:
    """The lines `gateway routes PATH` prints, in match order."""
    return [describe_route(r) for r in table.routes]
