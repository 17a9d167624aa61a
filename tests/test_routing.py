"""The compiled route table: matchers, filters, first match, strip_prefix and `gateway routes`."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.routing import RouteTable, describe_routes, normalize_host

UPSTREAMS = {"api": {"url": "http://127.0.0.1:9"}, "other": {"url": "http://127.0.0.1:10"}}


def table(*routes: dict[str, Any], **extra: Any) -> RouteTable:
    """A RouteTable from real config objects."""
    named = [{"name": f"r{i}", "upstream": "api", **r} for i, r in enumerate(routes)]
    return RouteTable.from_config(parse_config({"upstreams": UPSTREAMS, "routes": named, **extra}))


def name_of(t: RouteTable, path: str, method: str = "GET", host: str | None = None) -> str | None:
    route = t.match(method, host, path)
    return route.name if route else None


PREFIX_CASES = [
    ("/v1/payments", "/v1/payments", True, "prefix-itself"),
    ("/v1/payments", "/v1/payments/", True, "prefix-trailing-slash"),
    ("/v1/payments", "/v1/payments/42/refund", True, "prefix-deeper"),
    ("/v1/payments", "/v1/paymentsX", False, "prefix-not-segment"),
    ("/v1/payments", "/v1/payment", False, "prefix-shorter"),
    ("/v1/payments", "/v1", False, "prefix-parent"),
    ("/v1/payments/", "/v1/payments", True, "slash-prefix-itself"),
    ("/v1/payments/", "/v1/payments/42", True, "slash-prefix-deeper"),
    ("/v1/payments/", "/v1/paymentsX", False, "slash-prefix-not-segment"),
    ("/", "/", True, "root-prefix-root"),
    ("/", "/anything/at/all", True, "root-prefix-deep"),
    ("/V1", "/v1", False, "case-sensitive"),
]


@pytest.mark.parametrize(
    ("prefix", "path", "hit"),
    [c[:3] for c in PREFIX_CASES],
    ids=[c[3] for c in PREFIX_CASES],
)
def test_prefix_matches_whole_segments(prefix: str, path: str, hit: bool) -> None:
    """path_prefix matches the prefix itself and paths below it, on segment boundaries only."""
    assert (name_of(table({"path_prefix": prefix}), path) == "r0") is hit


EXACT_CASES = [
    ("/status", "/status", True, "same"),
    ("/status", "/status/", False, "trailing-slash"),
    ("/status", "/status/x", False, "below"),
    ("/status", "/Status", False, "case"),
    ("/a//b", "/a/b", True, "config-path-normalised"),
    ("/%7eme", "/~me", True, "config-escape-normalised"),
]


@pytest.mark.parametrize(
    ("path", "request_path", "hit"),
    [c[:3] for c in EXACT_CASES],
    ids=[c[3] for c in EXACT_CASES],
)
def test_exact(path: str, request_path: str, hit: bool) -> None:
    """`path` matches only the identical normalised path."""
    assert (name_of(table({"path": path}), request_path) == "r0") is hit


REGEX_CASES = [
    (r"^/v1/items/[0-9]+$", "/v1/items/42", True, "anchored-hit"),
    (r"^/v1/items/[0-9]+$", "/v1/items/42/x", False, "anchored-miss"),
    (r"/items/", "/v2/items/x", True, "unanchored-search"),
    (r"^/a$", "/A", False, "case-sensitive"),
    (r"^/a/*$", "/a", True, "optional-slash"),
    (r"^/a/?x", "/ax", True, "optional-char"),
    (r"^/a/x|^/b/y", "/b/y", True, "alternation"),
    (r"^/v1/x$", "/v1", False, "head-longer-than-path"),
    (r"^/v1/x$", "/v2/x", False, "other-head"),
    (r"^/v1/", "/v1/", True, "head-only"),
    (r"(?i)^/v1/x$", "/V1/X", True, "inline-flag"),
]


@pytest.mark.parametrize(
    ("regex", "path", "hit"),
    [c[:3] for c in REGEX_CASES],
    ids=[c[3] for c in REGEX_CASES],
)
def test_regex_uses_search(regex: str, path: str, hit: bool) -> None:
    """path_regex is applied with re.search semantics on the normalised path."""
    assert (name_of(table({"path_regex": regex}), path) == "r0") is hit


def test_first_match_in_file_order() -> None:
    """Whatever the matcher kinds, the earliest matching route wins."""
    t = table(
        {"path_regex": r"^/a/b/c$"},
        {"path_prefix": "/a/b"},
        {"path": "/a/b/c"},
        {"path_prefix": "/"},
    )
    assert name_of(t, "/a/b/c") == "r0"
    assert name_of(t, "/a/b/d") == "r1"
    assert name_of(t, "/x") == "r3"
    t = table({"path_prefix": "/a"}, {"path_prefix": "/a/b"}, {"path_regex": "^/a"})
    assert name_of(t, "/a/b") == "r0"


def test_later_shorter_prefix_loses_to_earlier_longer() -> None:
    """A deeper prefix listed first wins over a shallower one listed later, and vice versa."""
    t = table({"path_prefix": "/a/b"}, {"path_prefix": "/a"})
    assert name_of(t, "/a/b/c") == "r0"
    assert name_of(t, "/a/c") == "r1"


def test_methods_filter_falls_through() -> None:
    """A route whose methods exclude the request lets a later route match."""
    t = table(
        {"path": "/x", "methods": ["get", "HEAD"]},
        {"path_prefix": "/x", "methods": ["POST"]},
        {"path_regex": "^/x$"},
    )
    assert name_of(t, "/x", "GET") == "r0"
    assert name_of(t, "/x", "HEAD") == "r0"
    assert name_of(t, "/x", "POST") == "r1"
    assert name_of(t, "/x", "DELETE") == "r2"


HOST_CASES = [
    ("api.example.com", "api.example.com", True, "same"),
    ("api.example.com", "API.Example.COM", True, "case-insensitive"),
    ("api.example.com", "api.example.com:8443", True, "port-ignored"),
    ("api.example.com", "api.example.com.", True, "trailing-dot"),
    ("api.example.com", "other.example.com", False, "other-host"),
    ("api.example.com", None, False, "no-host-header"),
    ("api.example.com", "", False, "empty-host-header"),
    ("[::1]", "[::1]:8080", True, "ipv6-port"),
    ("::1", "[::1]", True, "ipv6-config-unbracketed"),
    ("127.0.0.1", "127.0.0.1:80", True, "ipv4-port"),
]


@pytest.mark.parametrize(
    ("route_host", "host", "hit"),
    [c[:3] for c in HOST_CASES],
    ids=[c[3] for c in HOST_CASES],
)
def test_host_filter(route_host: str, host: str | None, hit: bool) -> None:
    """Host compares case-insensitively, ignoring a port, with IPv6 brackets understood."""
    t = table({"path_prefix": "/", "host": route_host}, {"path_prefix": "/"})
    assert (name_of(t, "/x", host=host) == "r0") is hit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", None), (None, None), ("[::1", None), ("A.B:1", "a.b"), ("[FE80::1]:1", "fe80::1")],
    ids=["empty", "none", "unclosed-bracket", "port", "ipv6-case"],
)
def test_normalize_host(raw: str | None, expected: str | None) -> None:
    """normalize_host lower-cases and drops ports and brackets."""
    assert normalize_host(raw) == expected


STRIP_CASES = [
    ("/v1", "/v1/payments/1", "/payments/1", "strips"),
    ("/v1/", "/v1/payments", "/payments", "strips-slash-form"),
    ("/v1", "/v1", "/", "whole-path"),
    ("/v1", "/v1/", "/", "whole-path-slash"),
    ("/v1", "/v1x/a", "/v1x/a", "not-on-boundary"),
    ("/v2", "/v1/a", "/v1/a", "not-a-prefix"),
    ("/", "/v1/a", "/v1/a", "root"),
]


@pytest.mark.parametrize(
    ("strip", "path", "expected"),
    [c[:3] for c in STRIP_CASES],
    ids=[c[3] for c in STRIP_CASES],
)
def test_upstream_path(strip: str, path: str, expected: str) -> None:
    """strip_prefix removes whole leading segments and always leaves a path starting with `/`."""
    route = table({"path_prefix": "/", "strip_prefix": strip}).routes[0]
    assert route.upstream_path(path) == expected


def test_upstream_path_without_strip() -> None:
    """Without strip_prefix the path goes upstream unchanged."""
    route = table({"path_prefix": "/"}).routes[0]
    assert route.upstream_path("/a/b") == "/a/b"


def test_route_fields() -> None:
    """Route carries the precomputed policy of its RouteConfig."""
    t = table(
        {
            "path_prefix": "/v1/payments",
            "grants": ["authorization_code"],
            "scopes": ["payments", "read"],
            "appsecret_proof": "required",
            "query_token": False,
            "forward_token": True,
            "preflight": "pass",
            "max_body": "1KiB",
            "methods": ["POST"],
            "host": "API.example.com",
        },
        {"path": "/status", "auth": "public"},
        limits={"max_body": 5000},
    )
    r, s = t.routes
    assert (r.name, r.index, r.upstream, r.kind, r.matcher) == (
        "r0",
        0,
        "api",
        "prefix",
        "/v1/payments",
    )
    auth = r.auth
    assert auth is not None
    assert s.auth is None  # public: no token policy at all
    assert auth.grants == frozenset({"authorization_code"})
    assert auth.scopes == ("payments", "read")
    assert auth.required_scopes == frozenset({"payments", "read"})
    assert auth.appsecret_proof == "required"
    assert not auth.extract.query_allowed  # query_token: false
    assert not auth.extract.form_allowed  # tokens.form_param defaults to false
    assert not auth.strip_form_token  # forward_token: true keeps a form token too
    assert r.forward_token
    assert not s.forward_token
    assert auth.preflight_pass
    assert (r.max_body, s.max_body) == (1024, 5000)
    assert r.methods == frozenset({"POST"})
    assert s.methods is None
    assert r.host == "api.example.com"
    assert r.config.name == "r0"


def test_token_route_defaults_and_query_token_policy() -> None:
    """A token route with no options: any grant, no scopes, no proof; the query token is
    allowed only when both tokens.query_param and the route's query_token allow it."""
    t = table({"path": "/a"}, {"path": "/b", "query_token": False})
    a, b = (r.auth for r in t.routes)
    assert a is not None and b is not None
    assert (a.grants, a.scopes, a.appsecret_proof, a.preflight_pass) == (None, (), "off", False)
    assert a.extract.query_allowed and not b.extract.query_allowed
    assert a.strip_form_token
    off = table({"path": "/a"}, tokens={"query_param": False, "form_param": True})
    policy = off.routes[0].auth
    assert policy is not None
    assert not policy.extract.query_allowed and policy.extract.form_allowed


def test_unnormalisable_config_path_is_config_error() -> None:
    """A configured path that no request could ever match is a ConfigError naming its key,
    found by the one validation pass (parse_config), before any route table is built."""
    with pytest.raises(ConfigError, match=r"routes\[1\]\.path_prefix: cannot be normalised"):
        parse_config(
            {
                "upstreams": UPSTREAMS,
                "routes": [
                    {"name": "a", "path": "/ok", "upstream": "api"},
                    {"name": "b", "path_prefix": "/../x", "upstream": "api"},
                ],
            }
        )
    for key, value in (("path", "/a/%2F"), ("strip_prefix", "/x/../..")):
        with pytest.raises(ConfigError, match=rf"routes\[0\]\.{key}: cannot be normalised"):
            table({"path_prefix": "/", key: value} if key != "path" else {key: value})


def test_session_path_must_be_written_normalised() -> None:
    """The session endpoint is matched against normalised paths: a path written otherwise
    could never be reached, so it is refused with its normal form."""
    with pytest.raises(ConfigError, match=r"session_path: must be written normalised: '/a/b'"):
        table({"path": "/x"}, session_path="/a//b")
    assert (
        parse_config(
            {
                "upstreams": UPSTREAMS,
                "routes": [{"name": "r", "path": "/", "upstream": "api"}],
                "session_path": "/a/b",
            }
        ).session_path
        == "/a/b"
    )


def test_no_route() -> None:
    """With no matching route, match returns None."""
    assert name_of(table({"path": "/a"}), "/b") is None
    assert RouteTable(()).match("GET", None, "/") is None  # a config always has a route


def _reference_match(t: RouteTable, method: str, host: str | None, path: str) -> str | None:
    """The naive linear scan the compiled table must agree with."""
    for r in t.routes:
        if not r.accepts(method, normalize_host(host)):
            continue
        m = r.matcher
        if r.kind == "exact":
            hit = path == m
        elif r.kind == "prefix":
            base = m.rstrip("/")
            hit = path == base or path.startswith(base + "/") or base == ""
        else:
            hit = re.search(m, path) is not None
        if hit:
            return r.name
    return None


def test_thousand_routes_same_semantics() -> None:
    """With 1000 routes of every kind the compiled table agrees with a linear first-match scan."""
    routes: list[dict[str, Any]] = []
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            routes.append({"path": f"/svc{i % 37}/item{i}"})
        elif kind == 1:
            routes.append({"path_prefix": f"/svc{i % 37}", "methods": ["POST"]})
        elif kind == 2:
            routes.append({"path_regex": rf"^/svc{i % 37}/item[0-9]*{i % 10}$"})
        elif kind == 3:
            routes.append({"path_prefix": f"/svc{i % 37}/item{i % 50}", "host": f"h{i % 3}.test"})
        else:
            routes.append({"path_prefix": f"/deep/{i % 7}/{i % 11}/{i}"})
    routes.append({"path_prefix": "/"})
    t = table(*routes)
    paths = ["/", "/svc3", "/svc5/item10", "/svc5/item10/x", "/deep/4/4/4/more", "/nope"]
    paths += [f"/svc{i % 37}/item{i}" for i in range(0, 1000, 7)]
    paths += [f"/deep/{i % 7}/{i % 11}/{i}/z" for i in range(4, 1000, 45)]
    for path in paths:
        for method in ("GET", "POST"):
            for host in (None, "h1.test", "H2.TEST:80"):
                expected = _reference_match(t, method, host, path)
                assert name_of(t, path, method, host) == expected, (path, method, host)


def test_describe_routes() -> None:
    """`gateway routes` lines show order, matcher, filters, upstream and the full auth policy."""
    t = table(
        {"path": "/status", "auth": "public", "methods": ["GET", "HEAD"], "host": "a.test"},
        {
            "path_prefix": "/v1/payments",
            "upstream": "other",
            "strip_prefix": "/v1",
            "grants": ["authorization_code"],
            "scopes": ["payments"],
            "appsecret_proof": "required",
            "query_token": False,
            "preflight": "pass",
        },
        {"path_regex": "^/items/[0-9]+$"},
    )
    lines = describe_routes(t)
    assert len(lines) == 3
    assert lines[0].startswith("  1. r0")
    assert "exact /status" in lines[0]
    assert "methods=GET,HEAD" in lines[0]
    assert "host=a.test" in lines[0]
    assert "public" in lines[0]
    assert "prefix /v1/payments" in lines[1]
    assert "-> other" in lines[1]
    assert "strip_prefix=/v1" in lines[1]
    for part in (
        "token",
        "grants=authorization_code",
        "scopes=payments",
        "proof=required",
        "query_token=no",
        "forward_token=no",
        "preflight=pass",
    ):
        assert part in lines[1]
    assert "regex ^/items/[0-9]+$" in lines[2]
    assert "grants=* scopes=- proof=off query_token=yes" in lines[2]
