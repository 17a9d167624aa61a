"""RFC 6750 credential extraction: bearer token from header, query or form; appsecret_proof params;
the RFC 9449 `DPoP` authorization scheme.

Errors are InvalidRequestError with a stable reason; no message ever carries a token value.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_plus

from gateway.errors import InvalidRequestError

if TYPE_CHECKING:
    from gateway.authn.cache import TokenDigest

MAX_TOKEN_LENGTH: Final = 8192
_TOKEN68: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: RFC 7235 credentials: auth-scheme [ 1*SP rest ]; the scheme is an RFC 7230 token.
_AUTHORIZATION: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?: +(.*))?", re.DOTALL)
_OWS: Final = b" \t"
_TOKEN68_BYTES: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
_BEARER_PARAM: Final = "access_token"
_PROOF_PARAM: Final = "appsecret_proof"
_TIME_PARAM: Final = "appsecret_time"
_CREDENTIAL_PARAMS: Final = frozenset({_BEARER_PARAM, _PROOF_PARAM, _TIME_PARAM})
_compare_digest: Final = hmac.compare_digest  # a C static when compiled, not a global lookup


@dataclass(slots=True, frozen=True)
class ExtractPolicy:
    """Where a route accepts a token besides the Authorization header."""

    query_allowed: bool  # tokens.query_param and route.query_token
    form_allowed: bool  # tokens.form_param


class Credentials:
    """What the client sent: the bearer token (None if absent) and appsecret_proof parameters.

    A plain class, not a dataclass: built once per request, and compiled (setup.py) its
    constructor is a C function, where a dataclass's generated `__init__` stays Python."""

    __slots__ = ("dpop", "in_form", "in_query", "proof", "proof_time", "token")

    def __init__(
        self,
        token: str | None,
        in_query: bool = False,
        in_form: bool = False,
        proof: str | None = None,
        proof_time: str | None = None,
        dpop: bool = False,
    ) -> None:
        self.token = token
        self.in_query = in_query
        self.in_form = in_form
        self.proof = proof
        self.proof_time = proof_time
        self.dpop = dpop  # sent as `Authorization: DPoP` (RFC 9449 7.1), not Bearer

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaced

    def __repr__(self) -> str:
        token = "<set>" if self.token is not None else None  # never the token itself
        return (
            f"Credentials(token={token}, in_query={self.in_query}, in_form={self.in_form}, "
            f"proof={self.proof is not None}, proof_time={self.proof_time!r}, dpop={self.dpop})"
        )

    def _fields(self) -> tuple[str | None, bool, bool, str | None, str | None, bool]:
        return (self.token, self.in_query, self.in_form, self.proof, self.proof_time, self.dpop)


class KnownBearer:
    """An Authorization value already parsed on this connection, the token it carried and that
    token's digest: a keep-alive client resends the same value on every request, and an equal
    value (compared in constant time) needs no parsing or hashing again."""

    __slots__ = ("digest", "dpop", "raw", "token")

    def __init__(self, raw: bytes, token: str, digest: TokenDigest, dpop: bool = False) -> None:
        self.raw = raw
        self.token = token
        self.digest = digest
        self.dpop = dpop  # the value's scheme was DPoP


def _param_name(part: str) -> str:
    """The decoded name of one `name=value` pair (names are decoded as any framework would)."""
    name = part.partition("=")[0]
    return unquote_plus(name) if "%" in name or "+" in name else name


def _may_hold_credentials(query: str) -> bool:
    return "access_token" in query or "appsecret_" in query or "%" in query


def _query_params(query: str, names: frozenset[str]) -> dict[str, list[str]]:
    """Decoded values of the parameters in `names`, in order; other parameters are skipped."""
    found: dict[str, list[str]] = {}
    if not _may_hold_credentials(query):
        return found
    for part in query.split("&"):
        name = _param_name(part)
        if name in names:
            value = part.partition("=")[2]
            if "%" in value or "+" in value:
                value = unquote_plus(value)
            found.setdefault(name, []).append(value)
    return found


def _check_token(token: str) -> str:
    if not token:
        raise InvalidRequestError(reason="token_empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidRequestError(reason="token_too_long")
    if not _TOKEN68.fullmatch(token):
        raise InvalidRequestError(reason="token_malformed")
    return token


def _bearer(value: bytes) -> str | None:
    """The token of an `Authorization: Bearer` value; None for another scheme."""
    if value.startswith(b"Bearer ") and len(value) <= MAX_TOKEN_LENGTH + 7:
        # The common form, checked without a regex: token68 is 1*(its characters) *"=".
        token = value[7:]
        body = token.rstrip(b"=")
        if body and not body.translate(None, _TOKEN68_BYTES):
            return token.decode("ascii")
    match = _AUTHORIZATION.fullmatch(value.strip(_OWS))
    if match is None:
        raise InvalidRequestError(reason="authorization_malformed")
    if match.group(1).lower() != b"bearer":
        return None
    credentials = match.group(2)
    if not credentials:
        raise InvalidRequestError(reason="bearer_malformed")
    if len(credentials) > MAX_TOKEN_LENGTH:
        raise InvalidRequestError(reason="token_too_long")
    return _check_token(credentials.decode("latin-1"))


def _dpop(value: bytes) -> str | None:
    """The token of an `Authorization: DPoP` value (RFC 9449 7.1); None for another scheme."""
    match = _AUTHORIZATION.fullmatch(value.strip(_OWS))
    if match is None or match.group(1).lower() != b"dpop":
        return None
    credentials = match.group(2)
    if not credentials:
        raise InvalidRequestError(reason="dpop_token_malformed")
    if len(credentials) > MAX_TOKEN_LENGTH:
        raise InvalidRequestError(reason="token_too_long")
    return _check_token(credentials.decode("latin-1"))


def _one(values: list[str] | None, header: list[str], what: str) -> str | None:
    """The single value of a parameter sent in the query and/or a header; conflicts are 400."""
    if values and len(values) > 1:
        raise InvalidRequestError(reason=f"{what}_repeated")
    if len(header) > 1:
        raise InvalidRequestError(reason=f"{what}_repeated")
    query_value = values[0] if values else None
    header_value = header[0] if header else None
    if query_value is not None and header_value is not None and query_value != header_value:
        raise InvalidRequestError(reason=f"{what}_conflict")
    return query_value if query_value is not None else header_value


def _single_token(values: list[str] | None) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError(reason="token_repeated")
    return _check_token(values[0])


def _scan_headers(
    headers: list[tuple[bytes, bytes]], known: KnownBearer | None
) -> tuple[str | None, list[str] | None, list[str] | None, bool]:
    """The Authorization token (Bearer or DPoP: the last member says DPoP) and every
    X-Appsecret-Proof / -Time value, in order."""
    token: str | None = None
    dpop = False
    authorizations = 0
    proofs: list[str] | None = None  # lists only when such headers come (rarely)
    times: list[str] | None = None
    for name, value in headers:
        if name == b"authorization":
            authorizations += 1
            if authorizations > 1:
                raise InvalidRequestError(reason="authorization_repeated")
            if known is not None and _compare_digest(value, known.raw):
                token = known.token  # `known.token is token` tells the caller it matched
                dpop = known.dpop
            else:
                token = _bearer(value)
                if token is None:
                    token = _dpop(value)
                    dpop = token is not None
        elif name == b"x-appsecret-proof":
            proofs = proofs if proofs is not None else []
            proofs.append(value.strip(_OWS).decode("latin-1"))
        elif name == b"x-appsecret-time":
            times = times if times is not None else []
            times.append(value.strip(_OWS).decode("latin-1"))
    return token, proofs, times, dpop


def extract_credentials(
    headers: list[tuple[bytes, bytes]],
    query: str,
    policy: ExtractPolicy,
    form_body: bytes | None = None,
    known: KnownBearer | None = None,
) -> Credentials:
    """Find the bearer token and appsecret_proof parameters; raise InvalidRequestError if unclear.

    `headers` have lower-cased names; `query` is the raw query string (no `?`); `form_body` is
    the body of an `application/x-www-form-urlencoded` request, when the caller read it;
    `known` the connection's last Authorization value, reused when this one equals it.
    """
    header_token, proofs, times, dpop = _scan_headers(headers, known)
    plain_query = not query or not _may_hold_credentials(query)
    if proofs is None and times is None and form_body is None and plain_query:
        # the common case: a header token, or none at all
        return Credentials(header_token, False, False, None, None, dpop)
    params = _query_params(query, _CREDENTIAL_PARAMS)
    query_token = _single_token(params.get(_BEARER_PARAM))
    if query_token is not None and not policy.query_allowed:
        raise InvalidRequestError(reason="token_in_query_refused")
    form_token = _form_token(form_body) if policy.form_allowed and form_body else None
    sent = [t for t in (header_token, query_token, form_token) if t is not None]
    if len(sent) > 1:
        raise InvalidRequestError(reason="token_multiple_methods")
    return Credentials(
        token=sent[0] if sent else None,
        in_query=query_token is not None,
        in_form=form_token is not None,
        proof=_one(params.get(_PROOF_PARAM), proofs or [], "proof"),
        proof_time=_one(params.get(_TIME_PARAM), times or [], "proof_time"),
        dpop=dpop,
    )


def _form_token(body: bytes) -> str | None:
    params = _query_params(body.decode("latin-1"), frozenset({_BEARER_PARAM}))
    return _single_token(params.get(_BEARER_PARAM))


def strip_credentials_query(query: str) -> str:
    """`query` without access_token / appsecret_proof / appsecret_time; the rest byte-identical."""
    if not _may_hold_credentials(query):
        return query
    parts = query.split("&")
    kept = [p for p in parts if _param_name(p) not in _CREDENTIAL_PARAMS]
    return query if len(kept) == len(parts) else "&".join(kept)


def strip_form_token(body: bytes) -> bytes:
    """A urlencoded body without the access_token field(s) that extract_credentials reads."""
    if b"access_token" not in body and b"%" not in body:
        return body
    parts = body.split(b"&")
    kept = [p for p in parts if _param_name(p.decode("latin-1")) != _BEARER_PARAM]
    return body if len(kept) == len(parts) else b"&".join(kept)
