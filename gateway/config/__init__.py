"""Configuration: pydantic models, the YAML loader, and the reference generated from them."""

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
