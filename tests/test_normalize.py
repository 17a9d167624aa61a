"""SPEC section 3 path normalisation: a table of cases and attacks, and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import BadHttpRequestError
from gateway.normalize import normalize_path
from gateway.routing import RouteTable, route_for

NORMAL = [
    ("/", "/", "root"),
    ("/a/b", "/a/b", "plain"),
    ("/a/b/", "/a/b/", "trailing-slash-kept"),
    ("/a//../b", "/b", "spec-collapse-then-dots"),
    ("/x/.", "/x/", "spec-trailing-dot"),
    ("/a/./b", "/a/b", "single-dot"),
    ("/a/b/..", "/a/", "trailing-dotdot"),
    ("/a/b/../c", "/a/c", "dotdot"),
    ("/a/%2e%2e/b", "/b", "encoded-dotdot-lower"),
    ("/a/%2E%2e/b", "/b", "encoded-dotdot-mixed"),
    ("/a/.%2e/b", "/b", "half-encoded-dotdot"),
    ("/a/%2e/b", "/a/b", "encoded-dot"),
    ("//a///b", "/a/b", "many-slashes"),
    ("/.", "/", "root-dot"),
    ("/./", "/", "root-dot-slash"),
    ("/%7euser", "/~user", "tilde-decoded"),
    ("/%41%5a%61%7a%30%39%2d%5f", "/AZaz09-_", "unreserved-decoded"),
    ("/a%2ab", "/a%2Ab", "reserved-kept-upper"),
    ("/caf%c3%a9", "/caf%C3%A9", "utf8-kept-upper"),
    ("/a%25", "/a%25", "percent-not-double-decoded"),
    ("/a%252e%252e", "/a%252e%252e", "double-encoding-stays"),
    ("/a%3Fb", "/a%3Fb", "encoded-question-mark-kept"),
    ("/...", "/...", "three-dots-is-a-name"),
    ("/.well-known/x", "/.well-known/x", "dot-prefixed-name"),
    ("/a;b=c/d", "/a;b=c/d", "matrix-params"),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", "sub-delims"),
]

REFUSED = [
    ("", "path_not_absolute", "empty"),
    ("a/b", "path_not_absolute", "relative"),
    ("*", "path_not_absolute", "asterisk"),
    ("/..", "path_escapes_root", "dotdot-at-root"),
    ("/../x", "path_escapes_root", "dotdot-first"),
    ("/a/../../b", "path_escapes_root", "dotdot-twice"),
    ("/%2e%2e/x", "path_escapes_root", "encoded-dotdot-root"),
    ("/%2E%2E", "path_escapes_root", "encoded-dotdot-upper"),
    ("//..", "path_escapes_root", "slashes-then-dotdot"),
    ("/a%2fb", "path_encoded_separator", "encoded-slash"),
    ("/a%2Fb", "path_encoded_separator", "encoded-slash-upper"),
    ("/a%5cb", "path_encoded_separator", "encoded-backslash"),
    ("/a%5Cb", "path_encoded_separator", "encoded-backslash-upper"),
    ("/a\\b", "path_backslash", "backslash"),
    ("/a\\..\\b", "path_backslash", "backslash-dotdot"),
    ("/a%00", "path_control_char", "encoded-nul"),
    ("/a\x00b", "path_control_char", "nul"),
    ("/a%0a", "path_control_char", "encoded-lf"),
    ("/a%0D%0A", "path_control_char", "encoded-crlf"),
    ("/a%1f", "path_control_char", "encoded-unit-separator"),
    ("/a%7f", "path_control_char", "encoded-del"),
    ("/a\tb", "path_control_char", "tab"),
    ("/a\x7f", "path_control_char", "del"),
    ("/a b", "path_bad_char", "space"),
    ("/a#b", "path_bad_char", "fragment"),
    ("/a?b", "path_bad_char", "question-mark"),
    ("/caf\xe9", "path_non_ascii", "latin1"),
    ("/\u0130", "path_non_ascii", "unicode"),
    ("/a%", "path_bad_escape", "truncated-escape"),
    ("/a%4", "path_bad_escape", "half-escape"),
    ("/a%zz", "path_bad_escape", "non-hex-escape"),
    ("/a%%41", "path_bad_escape", "percent-percent"),
    ("/a%4/", "path_bad_escape", "half-escape-then-slash"),
    ("/public/..;/admin", "path_dot_segment_params", "tomcat-dotdot-params"),
    ("/a/.;x/b", "path_dot_segment_params", "dot-params"),
    ("/a/%2e%2e;/b", "path_dot_segment_params", "encoded-dotdot-params"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[:2] for c in NORMAL], ids=[c[2] for c in NORMAL])
def test_normalizes(raw: str, expected: str) -> None:
    """Each SPEC section 3 example normalises to its canonical form."""
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(("raw", "reason"), [c[:2] for c in REFUSED], ids=[c[2] for c in REFUSED])
def test_refuses_unsafe(raw: str, reason: str) -> None:
    """Each unsafe path is a 400 invalid_request with a stable reason."""
    with pytest.raises(BadHttpRequestError) as info:
        normalize_path(raw)
    assert info.value.reason == reason
    assert info.value.status == 400
    assert info.value.error_code == "invalid_request"


def test_fast_path_returns_same_object() -> None:
    """An already-normal path is returned as is, without building a new string."""
    raw = "/v1/payments/123"
    assert normalize_path(raw) is raw


ALPHABET = "/.%25efEFcC\\ab;?#~ \x00\x7f\xe9"
raw_paths = st.text(alphabet=ALPHABET, max_size=24).map(lambda s: "/" + s)
any_text = st.text(max_size=24)
SEGMENTS = re.compile(r"(^|/)\.\.?(/|$)")


def _normal_or_none(raw: str) -> str | None:
    try:
        return normalize_path(raw)
    except BadHttpRequestError:
        return None


@given(raw_paths)
@example("/a/%2e%2e/%2e/b//c")
def test_idempotent(raw: str) -> None:
    """Normalising a normalised path changes nothing."""
    out = _normal_or_none(raw)
    if out is not None:
        assert normalize_path(out) == out


@given(st.one_of(raw_paths, any_text))
def test_outputs_are_clean(raw: str) -> None:
    """Outputs never hold `//`, dot segments, `\\`, controls, non-ASCII or lower-case escapes."""
    out = _normal_or_none(raw)
    if out is None:
        return
    assert out.startswith("/")
    assert "//" not in out
    assert not SEGMENTS.search(out)
    assert not re.search(r"[\\\x00-\x20\x7f-\uffff#?]", out)
    assert not re.search(r"%(?![0-9A-F]{2})", out)
    assert not re.search(r"(?i)%(2f|5c|2e|7e|[46][1-9a-f]|[57][0-9a]|3[0-9]|2d|5f)", out)


@given(st.one_of(raw_paths, any_text, st.binary(max_size=16).map(lambda b: b.decode("latin-1"))))
def test_only_bad_request_escapes(raw: str) -> None:
    """Any text is either normalised or refused with BadHttpRequestError, nothing else."""
    _normal_or_none(raw)


def _table() -> RouteTable:
    routes = [
        {"name": "admin", "path_prefix": "/admin", "upstream": "api"},
        {"name": "exact", "path": "/a/b", "upstream": "api"},
        {"name": "items", "path_regex": r"^/items/[0-9]+$", "upstream": "api"},
        {"name": "public", "path_prefix": "/public/", "upstream": "api", "auth": "public"},
        {"name": "dots", "path_prefix": "/.e", "upstream": "api"},
        {"name": "tail", "path_regex": r"/f$", "upstream": "api"},
        {"name": "root", "path": "/", "upstream": "api", "auth": "public"},
    ]
    cfg = parse_config({"upstreams": {"api": {"url": "http://127.0.0.1:9"}}, "routes": routes})
    return RouteTable.from_config(cfg)


TABLE = _table()
ROUTE_ALPHABET = "/.%25efEFcC\\adminpublc;019"
route_paths = st.text(alphabet=ROUTE_ALPHABET, max_size=30).map(lambda s: "/" + s)


@given(route_paths)
@example("/public/../admin")
@example("/public/%2e%2e/admin/x")
@example("/public/..;/admin")
@example("/admin%2f..")
def test_client_path_matches_as_its_normal_form(raw: str) -> None:
    """No client path matches a route that its normalised form does not match."""
    try:
        got = route_for(TABLE, "GET", None, raw)
    except BadHttpRequestError:
        return
    assert got is TABLE.match("GET", None, normalize_path(raw))


@given(route_paths)
@example("/public/../admin")
@example("/public/./../admin/")
def test_admin_reached_only_as_admin(raw: str) -> None:
    """A path normalising under /admin always matches the admin route, never public's."""
    out = _normal_or_none(raw)
    if out is None or not (out == "/admin" or out.startswith("/admin/")):
        return
    route = route_for(TABLE, "GET", None, raw)
    assert route is not None
    assert route.name == "admin"


ROUTED = [
    ("/public/../admin", "admin"),
    ("/public/%2e%2e/admin/users", "admin"),
    ("//public//x", "public"),
    ("/items/12", "items"),
    ("/items/./12", "items"),
    ("/x/../items/12", "items"),
    ("/a//b", "exact"),
    ("/a/b/", None),
    ("/%2e/a/b", "exact"),
    ("/e/%66", "tail"),
    ("/", "root"),
    ("/z/..", "root"),
]


@pytest.mark.parametrize(("raw", "name"), ROUTED, ids=[raw for raw, _ in ROUTED])
def test_route_for_uses_normal_form(raw: str, name: str | None) -> None:
    """route_for picks the route of the normalised path."""
    route = route_for(TABLE, "GET", None, raw)
    assert (route.name if route else None) == name


def test_route_for_refuses_unsafe() -> None:
    """route_for raises BadHttpRequestError for a path that escapes the root."""
    with pytest.raises(BadHttpRequestError):
        route_for(TABLE, "GET", None, "/public/../../admin")
