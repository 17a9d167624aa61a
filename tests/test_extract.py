"""RFC 6750 credential extraction: Authorization header, query and form; appsecret_proof params."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequestError
from gateway.extract import (
    MAX_TOKEN_LENGTH,
    Credentials,
    ExtractPolicy,
    extract_credentials,
    strip_credentials_query,
    strip_form_token,
)

OPEN = ExtractPolicy(query_allowed=True, form_allowed=True)
CLOSED = ExtractPolicy(query_allowed=False, form_allowed=False)
TOKEN = "tok-EN.1_2~3+4/5=="
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
Headers = list[tuple[bytes, bytes]]


def auth(value: str) -> Headers:
    return [(b"authorization", value.encode("latin-1"))]


def extract(
    headers: Headers | None = None,
    query: str = "",
    policy: ExtractPolicy = OPEN,
    form: bytes | None = None,
) -> Credentials:
    return extract_credentials(headers or [], query, policy, form)


HEADER_OK = [
    ("Bearer abc", "abc", "plain"),
    ("bearer abc", "abc", "scheme-lower"),
    ("BEARER abc", "abc", "scheme-upper"),
    ("Bearer    abc", "abc", "several-spaces"),
    ("  Bearer abc \t", "abc", "surrounding-whitespace"),
    (f"Bearer {TOKEN}", TOKEN, "all-token68-chars"),
    ("Bearer " + "a" * MAX_TOKEN_LENGTH, "a" * MAX_TOKEN_LENGTH, "longest-token"),
]


@pytest.mark.parametrize(
    ("value", "token"), [c[:2] for c in HEADER_OK], ids=[c[2] for c in HEADER_OK]
)
def test_header_token(value: str, token: str) -> None:
    """A well-formed `Authorization: Bearer` header yields its token."""
    creds = extract(auth(value))
    assert creds.token == token
    assert not creds.in_query
    assert not creds.in_form


HEADER_BAD = [
    ("Bearer", "bearer_malformed", "no-credentials"),
    ("Bearer ", "bearer_malformed", "empty-credentials"),
    ("Bearer a b", "token_malformed", "two-parts"),
    ("Bearer a,b", "token_malformed", "comma"),
    ("Bearer =abc", "token_malformed", "leading-equals"),
    ("Bearer a=b", "token_malformed", "inner-equals"),
    ("Bearer a\u00e9", "token_malformed", "non-ascii"),
    ("Bearer\tabc", "authorization_malformed", "tab-separator"),
    ("", "authorization_malformed", "empty-header"),
    ('"Bearer" abc', "authorization_malformed", "quoted-scheme"),
    ("Bearer " + "a" * (MAX_TOKEN_LENGTH + 1), "token_too_long", "too-long"),
]


@pytest.mark.parametrize(
    ("value", "reason"), [c[:2] for c in HEADER_BAD], ids=[c[2] for c in HEADER_BAD]
)
def test_header_malformed(value: str, reason: str) -> None:
    """A malformed Bearer header is invalid_request, and the reason never holds the value."""
    with pytest.raises(InvalidRequestError) as info:
        extract(auth(value))
    assert info.value.reason == reason
    assert info.value.status == 400


_ALPHABET = 'Bearer bearer=aZ09-._~+/ \t=,"\u00e9\x00'


def _reference_bearer(value: bytes) -> str | None:
    """RFC 6750 section 2.1 / RFC 7235, straight from the grammar: the oracle for the header."""
    value = value.strip(b" \t")
    m = re.fullmatch(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?: +(.*))?", value, re.DOTALL)
    if m is None:
        return "error"
    if m.group(1).lower() != b"bearer":
        return None
    cred = (m.group(2) or b"").decode("latin-1")
    if not cred or len(cred) > MAX_TOKEN_LENGTH or not TOKEN68.fullmatch(cred):
        return "error"
    return cred


@given(st.text(alphabet=_ALPHABET, max_size=24))
def test_header_parsing_matches_the_grammar(value: str) -> None:
    """Whatever the header holds, the token (or refusal) is what the RFC grammar gives: the
    regex-free fast path for `Bearer <token68>` agrees with the full parse."""
    raw = value.encode("utf-8")
    try:
        got: str | None = extract([(b"authorization", raw)]).token
    except InvalidRequestError:
        got = "error"
    assert got == _reference_bearer(raw)


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNz", "Digest username=x, realm=y", "Token abc", "Bearerx abc"],
    ids=["basic", "digest", "other-scheme", "scheme-prefix"],
)
def test_other_scheme_is_no_token(value: str) -> None:
    """A non-Bearer Authorization scheme means no bearer token (the caller answers 401)."""
    assert extract(auth(value)).token is None


def test_no_credentials() -> None:
    """Without any token, the token is None and nothing is flagged."""
    creds = extract([(b"accept", b"*/*")], "a=1&b=2")
    assert creds == Credentials(None, in_query=False, in_form=False, proof=None, proof_time=None)


def test_two_authorization_headers() -> None:
    """Two Authorization headers are invalid_request, even when both are identical."""
    with pytest.raises(InvalidRequestError, match="authorization_repeated"):
        extract(auth("Bearer abc") + auth("Bearer abc"))


QUERY_OK = [
    ("access_token=abc", "abc", "alone"),
    ("a=1&access_token=abc&b=2", "abc", "among-others"),
    ("access_token=ab%2Bc%2F%3D", "ab+c/=", "percent-encoded"),
    ("acc%65ss_token=abc", "abc", "encoded-name"),
    ("x=access_token&y=1", None, "name-as-value"),
    ("access_tokenx=abc", None, "longer-name"),
    ("Access_Token=abc", None, "name-case-sensitive"),
]


@pytest.mark.parametrize(
    ("query", "token"), [c[:2] for c in QUERY_OK], ids=[c[2] for c in QUERY_OK]
)
def test_query_token(query: str, token: str | None) -> None:
    """`access_token` in the query string is found (and decoded) when the route allows it."""
    creds = extract(query=query)
    assert creds.token == token
    assert creds.in_query is (token is not None)


QUERY_BAD = [
    ("access_token=a&access_token=a", "token_repeated", "twice-same"),
    ("access_token=a&access_token=b", "token_repeated", "twice-different"),
    ("access_token=", "token_empty", "empty"),
    ("access_token", "token_empty", "no-equals"),
    ("access_token=a+b", "token_malformed", "plus-is-space"),
    ("access_token=a%00", "token_malformed", "nul"),
    ("access_token=%ff", "token_malformed", "bad-utf8"),
    ("access_token=" + "a" * (MAX_TOKEN_LENGTH + 1), "token_too_long", "too-long"),
]


@pytest.mark.parametrize(
    ("query", "reason"), [c[:2] for c in QUERY_BAD], ids=[c[2] for c in QUERY_BAD]
)
def test_query_token_malformed(query: str, reason: str) -> None:
    """A repeated, empty or malformed query token is invalid_request."""
    with pytest.raises(InvalidRequestError) as info:
        extract(query=query)
    assert info.value.reason == reason


def test_query_token_refused() -> None:
    """A query token on a route (or gateway) refusing it is invalid_request."""
    with pytest.raises(InvalidRequestError, match="token_in_query_refused"):
        extract(query="access_token=abc", policy=CLOSED)


def test_header_and_query() -> None:
    """A token sent both in the header and the query is invalid_request, even the same one."""
    with pytest.raises(InvalidRequestError, match="token_multiple_methods"):
        extract(auth("Bearer abc"), "access_token=abc")


def test_form_token() -> None:
    """With form_param on, access_token in a urlencoded body is a token."""
    creds = extract(form=b"x=1&access_token=abc")
    assert creds.token == "abc"
    assert creds.in_form
    assert not creds.in_query


def test_form_ignored_when_not_allowed() -> None:
    """With form_param off, the body is not looked at."""
    assert extract(form=b"access_token=abc", policy=CLOSED).token is None


@pytest.mark.parametrize(
    ("headers", "query", "form"),
    [
        (auth("Bearer abc"), "", b"access_token=abc"),
        ([], "access_token=abc", b"access_token=abc"),
        ([], "", b"access_token=a&access_token=b"),
    ],
    ids=["header-and-form", "query-and-form", "form-twice"],
)
def test_form_counts_as_a_place(headers: Headers, query: str, form: bytes) -> None:
    """The form body is a third place: combined with another, or repeated, it is invalid_request."""
    with pytest.raises(InvalidRequestError):
        extract(headers, query, form=form)


PROOF_OK = [
    ([(b"x-appsecret-proof", b"ABCD")], "", "ABCD", None, "header"),
    ([], "appsecret_proof=abcd", "abcd", None, "query"),
    ([(b"x-appsecret-proof", b"ab"), (b"x-appsecret-time", b"12")], "", "ab", "12", "header-time"),
    ([], "appsecret_proof=ab&appsecret_time=12", "ab", "12", "query-time"),
    ([(b"x-appsecret-proof", b"ab")], "appsecret_proof=ab", "ab", None, "both-same"),
    ([(b"x-appsecret-time", b"12")], "appsecret_proof=ab&appsecret_time=12", "ab", "12", "mixed"),
    ([], "appsecret_proof=", "", None, "empty-proof-is-sent"),
]


@pytest.mark.parametrize(
    ("headers", "query", "proof", "time"),
    [c[:4] for c in PROOF_OK],
    ids=[c[4] for c in PROOF_OK],
)
def test_proof_params(headers: Headers, query: str, proof: str, time: str | None) -> None:
    """appsecret_proof and appsecret_time come from the query or the X-Appsecret-* headers."""
    creds = extract(headers, query, policy=CLOSED)
    assert (creds.proof, creds.proof_time) == (proof, time)


PROOF_BAD = [
    ([(b"x-appsecret-proof", b"ab")], "appsecret_proof=cd", "proof_conflict", "proof-differs"),
    ([], "appsecret_proof=ab&appsecret_proof=ab", "proof_repeated", "proof-query-twice"),
    ([(b"x-appsecret-proof", b"a")] * 2, "", "proof_repeated", "proof-header-twice"),
    ([(b"x-appsecret-time", b"1")], "appsecret_time=2", "proof_time_conflict", "time-differs"),
    ([], "appsecret_time=1&appsecret_time=1", "proof_time_repeated", "time-query-twice"),
    ([(b"x-appsecret-time", b"1")] * 2, "", "proof_time_repeated", "time-header-twice"),
]


@pytest.mark.parametrize(
    ("headers", "query", "reason"),
    [c[:3] for c in PROOF_BAD],
    ids=[c[3] for c in PROOF_BAD],
)
def test_proof_conflicts(headers: Headers, query: str, reason: str) -> None:
    """A proof or time that repeats, or differs between query and header, is invalid_request."""
    with pytest.raises(InvalidRequestError) as info:
        extract(headers, query)
    assert info.value.reason == reason


STRIP = [
    ("", "", "empty"),
    ("a=1&b=2", "a=1&b=2", "nothing-to-strip"),
    ("access_token=x", "", "only-token"),
    ("a=1&access_token=x&b=%20+2", "a=1&b=%20+2", "middle"),
    ("appsecret_proof=p&a=1&appsecret_time=3", "a=1", "proof-and-time"),
    ("a=1&&b&access_token", "a=1&&b", "keeps-odd-parts"),
    ("acc%65ss_token=x&a=%41", "a=%41", "encoded-name"),
    ("x=access_token&access_tokens=1", "x=access_token&access_tokens=1", "lookalikes-kept"),
    ("b=%ZZ&a=1", "b=%ZZ&a=1", "bad-escapes-kept"),
]


@pytest.mark.parametrize(("query", "expected"), [c[:2] for c in STRIP], ids=[c[2] for c in STRIP])
def test_strip_credentials_query(query: str, expected: str) -> None:
    """Only the three credential parameters go; everything else stays byte-identical, in order."""
    assert strip_credentials_query(query) == expected


def test_strip_fast_path_same_object() -> None:
    """A query without credential names is returned as is."""
    query = "a=1&b=2"
    assert strip_credentials_query(query) is query


SECRET = "SeCrEt-token-value"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        (auth(f"Bearer {SECRET} x"), ""),
        (auth(f"Bearer {SECRET}") * 2, ""),
        (auth(f"Bearer {SECRET}"), f"access_token={SECRET}"),
        ([], f"access_token={SECRET}&access_token={SECRET}"),
        ([], f"access_token={SECRET}%00"),
        ([], f"access_token={SECRET}" + "a" * MAX_TOKEN_LENGTH),
    ],
    ids=["malformed", "repeated-header", "two-places", "repeated-query", "bad-char", "too-long"],
)
def test_errors_never_carry_the_token(headers: Headers, query: str) -> None:
    """No error message or reason contains the token value."""
    with pytest.raises(InvalidRequestError) as info:
        extract(headers, query)
    assert SECRET not in str(info.value)
    assert SECRET not in info.value.reason
    assert SECRET not in repr(info.value.args)


QUERY_ALPHABET = "access_token=appsecret_proof&time%2B+=abcAZ09-._~/\x00 é"
header_values = st.binary(max_size=40) | st.text(alphabet="Bearer \t=+/abc,é", max_size=30).map(
    lambda s: s.encode("utf-8")
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"authorization", b"x-appsecret-proof", b"x-appsecret-time"]),
            header_values,
        ),
        max_size=3,
    ),
    st.text(alphabet=QUERY_ALPHABET, max_size=60) | st.text(max_size=30),
    st.booleans(),
    st.binary(max_size=40) | st.none(),
)
def test_fuzz_only_invalid_request(
    headers: Headers, query: str, query_allowed: bool, form: bytes | None
) -> None:
    """Arbitrary input either gives a token68 token (or none) or raises InvalidRequestError."""
    policy = ExtractPolicy(query_allowed=query_allowed, form_allowed=True)
    try:
        creds = extract_credentials(headers, query, policy, form)
    except InvalidRequestError:
        return
    if creds.token is not None:
        assert TOKEN68.fullmatch(creds.token)
        assert len(creds.token) <= MAX_TOKEN_LENGTH


@given(st.text(alphabet=QUERY_ALPHABET, max_size=60) | st.text(max_size=30))
def test_fuzz_strip(query: str) -> None:
    """Stripping removes every credential parameter, keeps the rest, and is idempotent."""
    out = strip_credentials_query(query)
    assert strip_credentials_query(out) == out
    kept = set(out.split("&")) if out else set()
    assert kept <= set(query.split("&"))
    creds = extract_credentials([], out, ExtractPolicy(query_allowed=True, form_allowed=False))
    assert (creds.token, creds.proof, creds.proof_time) == (None, None, None)


FORM_STRIP = [
    (b"a=1&access_token=x&b=2", b"a=1&b=2", "middle"),
    (b"acc%65ss_token=x&b=%FF", b"b=%FF", "encoded-name"),
    (b"appsecret_proof=p&c=\xff", b"appsecret_proof=p&c=\xff", "only-the-token-goes"),
    (b"a=1", b"a=1", "untouched"),
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[:2] for c in FORM_STRIP], ids=[c[2] for c in FORM_STRIP]
)
def test_strip_form_token(body: bytes, expected: bytes) -> None:
    """The form token that extraction reads is the one removed from the body, bytes kept."""
    assert strip_form_token(body) == expected
