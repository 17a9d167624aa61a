"""Configuration: pydantic models (SPEC section 2) and the YAML loader."""

from gateway.config.loader import load_config, parse_config
from gateway.config.models import (
    AppConfig,
    GatewayConfig,
    IntrospectionSource,
    JwtSource,
    RouteConfig,
    StoreSource,
    UpstreamConfig,
)

__all__ = [
    "AppConfig",
    "GatewayConfig",
    "IntrospectionSource",
    "JwtSource",
    "RouteConfig",
    "StoreSource",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]
