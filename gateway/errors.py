"""One exception tree for every failure a client can see, mapped to RFC 6750 answers.

    GatewayError (500)
    ├── InvalidRequestError          400 invalid_request (WWW-Authenticate)
    │   └── BadHttpRequestError      400 invalid_request (malformed HTTP; no challenge)
    ├── MissingTokenError            401 (no error attribute; body "missing_token")
    ├── InvalidTokenError            401 invalid_token
    │   ├── WrongAudienceError       401 invalid_token (not for this resource)
    │   ├── TokenBindingError        401 invalid_token (not bound to this key / certificate)
    │   └── UnboundTokenError        401 invalid_token (the route requires a bound token)
    ├── InvalidDpopProofError        401 invalid_dpop_proof (WWW-Authenticate: DPoP)
    ├── UseDpopNonceError            401 use_dpop_nonce (+ DPoP-Nonce)
    ├── InsufficientScopeError       403 insufficient_scope (+ scope="...")
    ├── InsufficientGrantError       403 insufficient_grant
    ├── InvalidProofError            403 invalid_appsecret_proof
    ├── NoRouteError                 404 not_found
    ├── MethodNotAllowedError        405 method_not_allowed
    ├── PayloadTooLargeError         413 request_entity_too_large
    ├── UriTooLongError              414 uri_too_long
    ├── RateLimitedError             429 rate_limited (+ Retry-After, RateLimit-Policy, RateLimit)
    ├── HeadersTooLargeError         431 request_header_fields_too_large
    ├── UpstreamError                502 bad_gateway
    ├── ValidatorUnavailableError    503 temporarily_unavailable (+ Retry-After)
    ├── OverloadedError              503 overloaded (+ Retry-After)
    ├── StoreUnavailableError        503 temporarily_unavailable (revocation could not be recorded)
    └── UpstreamTimeoutError         504 gateway_timeout

ConfigError stands apart: it never becomes an HTTP response.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base of every failure a client can see; status and code sit on the class."""

    status: ClassVar[int] = 500
    error_code: ClassVar[str] = "server_error"
    description: ClassVar[str] = "The gateway failed to handle the request."
    #: whether the answer carries an RFC 6750 `WWW-Authenticate: Bearer` challenge
    challenge: ClassVar[bool] = False
    #: an RFC 9449 error: always challenged with the `DPoP` scheme
    dpop: ClassVar[bool] = False
    #: seconds for `Retry-After`, or None
    retry_after: ClassVar[int | None] = None
    #: stable reason for logs and metrics
    reason: str

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.error_code
        super().__init__(self.reason)


class InvalidRequestError(GatewayError):
    status = 400
    error_code = "invalid_request"
    description = "The request is missing a required parameter or is otherwise malformed."
    challenge = True


class BadHttpRequestError(InvalidRequestError):
    """Malformed HTTP (smuggling attempts, unsafe paths): not a token problem."""

    description = "The request is malformed."
    challenge = False


class MissingTokenError(GatewayError):
    status = 401
    error_code = "missing_token"
    description = "An access token is required."
    challenge = True


class InvalidTokenError(GatewayError):
    status = 401
    error_code = "invalid_token"
    description = "The access token is invalid, expired or revoked."
    challenge = True


class WrongAudienceError(InvalidTokenError):
    """The token's `aud` does not name the route's resource (RFC 8707, RFC 9068)."""

    description = "The access token is not for this resource."


class TokenBindingError(InvalidTokenError):
    """A sender-constrained token without its key or certificate, or a bearer token where the
    route requires a bound one (RFC 9449 7.1, RFC 8705 3)."""

    description = "The access token is not bound to the key or certificate presented."


class UnboundTokenError(InvalidTokenError):
    """The route's sender_constraint requires a DPoP- or certificate-bound token."""

    description = "This resource requires a sender-constrained access token."


class InvalidDpopProofError(GatewayError):
    """RFC 9449 section 7.1: the DPoP proof is missing, malformed, wrongly signed or replayed."""

    status = 401
    error_code = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."
    challenge = True
    dpop = True  # challenged with the DPoP scheme


class UseDpopNonceError(GatewayError):
    """RFC 9449 section 9: the proof must carry the nonce of the DPoP-Nonce header."""

    status = 401
    error_code = "use_dpop_nonce"
    description = "The resource server requires a nonce in the DPoP proof."
    challenge = True
    dpop = True


class InsufficientScopeError(GatewayError):
    status = 403
    error_code = "insufficient_scope"
    description = "The access token lacks a scope this resource requires."
    challenge = True

    def __init__(self, required: frozenset[str] | tuple[str, ...], reason: str | None = None):
        self.scope = " ".join(sorted(required))
        super().__init__(reason)


class InsufficientGrantError(GatewayError):
    status = 403
    error_code = "insufficient_grant"
    description = "The access token was issued by a grant this resource does not accept."
    challenge = True


class InvalidProofError(GatewayError):
    status = 403
    error_code = "invalid_appsecret_proof"
    description = "The appsecret_proof is invalid."
    challenge = True


class NoRouteError(GatewayError):
    status = 404
    error_code = "not_found"
    description = "No route matches the request."


class MethodNotAllowedError(GatewayError):
    status = 405
    error_code = "method_not_allowed"
    description = "The method is not allowed on this resource."

    def __init__(self, allow: tuple[str, ...], reason: str | None = None) -> None:
        self.allow = ", ".join(allow)  # for the Allow header (RFC 9110 15.5.6)
        super().__init__(reason)


class PayloadTooLargeError(GatewayError):
    status = 413
    error_code = "request_entity_too_large"
    description = "The request body is larger than allowed."


class UriTooLongError(GatewayError):
    status = 414
    error_code = "uri_too_long"
    description = "The request URI is longer than allowed."


class RateLimitedError(GatewayError):
    """Over a rate limit of the route (SPEC section 14): the answer says when to retry and
    the state of each of the route's policies."""

    status = 429
    error_code = "rate_limited"
    description = "Too many requests; retry after the time given in Retry-After."

    def __init__(
        self, retry_after: int, headers: list[tuple[bytes, bytes]], reason: str | None = None
    ) -> None:
        self.retry_after = retry_after  # type: ignore[misc]  # per answer, not per class
        self.headers = headers  # RateLimit-Policy and RateLimit
        super().__init__(reason)


class HeadersTooLargeError(GatewayError):
    status = 431
    error_code = "request_header_fields_too_large"
    description = "The request headers are larger than allowed."


class UpstreamError(GatewayError):
    status = 502
    error_code = "bad_gateway"
    description = "The upstream service could not be reached or failed."


class ValidatorUnavailableError(GatewayError):
    status = 503
    error_code = "temporarily_unavailable"
    description = "The token could not be validated right now; retry later."
    challenge = True
    retry_after = 5


class StoreUnavailableError(GatewayError):
    status = 503
    error_code = "temporarily_unavailable"
    description = "The token store is unavailable; retry later."
    retry_after = 5


class OverloadedError(GatewayError):
    status = 503
    error_code = "overloaded"
    description = "The gateway is handling too many requests; retry later."
    retry_after = 1


class UpstreamTimeoutError(GatewayError):
    status = 504
    error_code = "gateway_timeout"
    description = "The upstream service did not answer in time."


class ConfigError(Exception):
    """A configuration cannot be used; carries every problem found, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
