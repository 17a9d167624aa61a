"""OAuth 2.0 Protected Resource Metadata (RFC 9728): one document per configured resource,
served on the main listener at the well-known path derived from its id (section 3.1), for any
Host and without a token. The documents are rendered once per config."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.config.models import GatewayConfig, ResourceConfig, RouteConfig
from gateway.errors import MethodNotAllowedError
from gateway.http.exchange import Exchange

_METHODS = ("GET", "HEAD")
_HEADERS = (
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
)
_PREFLIGHT = (
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, HEAD"),
    (b"access-control-allow-headers", b"*"),
    (b"access-control-max-age", b"86400"),
)


def metadata_document(cfg: GatewayConfig, resource: ResourceConfig) -> dict[str, Any]:
    """The RFC 9728 section 2 members SPEC section 12 lists, from the resource and its routes."""
    routes = [r for r in cfg.routes if r.resource == resource.id]
    doc: dict[str, Any] = {
        "resource": resource.id,
        "authorization_servers": list(resource.authorization_servers),
        "scopes_supported": list(resource.scopes_supported)
        if resource.scopes_supported is not None
        else _route_scopes(routes),
        "bearer_methods_supported": _bearer_methods(cfg, routes),
    }
    if resource.documentation is not None:
        doc["resource_documentation"] = resource.documentation
    constraints = {r.sender_constraint for r in routes}
    if cfg.tokens.dpop is not None or constraints & {"dpop", "any"}:
        doc["dpop_signing_alg_values_supported"] = list(cfg.tokens.dpop_settings.algorithms)
    if routes and constraints == {"dpop"}:
        doc["dpop_bound_access_tokens_required"] = True
    if routes and constraints == {"mtls"}:
        doc["tls_client_certificate_bound_access_tokens"] = True
    return doc


def _route_scopes(routes: list[RouteConfig]) -> list[str]:
    seen: dict[str, None] = {}
    for route in routes:
        seen.update(dict.fromkeys(route.scopes))
    return list(seen)


def _bearer_methods(cfg: GatewayConfig, routes: list[RouteConfig]) -> list[str]:
    """`header` always; `query` / `body` where the resource's routes accept tokens there."""
    methods = ["header"]
    if cfg.tokens.query_param and any(r.query_token for r in routes):
        methods.append("query")
    if cfg.tokens.form_param and routes:
        methods.append("body")
    return methods


class ResourceMetadata:
    """The documents by request path; answers GET / HEAD (and CORS preflights), else 405."""

    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> ResourceMetadata | None:
        """None when no resource is configured (the request path then never looks)."""
        if not cfg.resources:
            return None
        return cls(
            {r.metadata_path: orjson.dumps(metadata_document(cfg, r)) for r in cfg.resources}
        )

    def get(self, path: str) -> bytes | None:
        return self.documents.get(path)

    def answer(self, ex: Exchange, document: bytes) -> None:
        method = ex.head.method
        if method in _METHODS:
            ex.respond(200, list(_HEADERS), document)
        elif (
            method == "OPTIONS"
            and ex.head.header(b"origin") is not None
            and ex.head.header(b"access-control-request-method") is not None
        ):
            ex.respond(204, list(_PREFLIGHT), b"")
        else:
            raise MethodNotAllowedError(_METHODS, "metadata_method")
