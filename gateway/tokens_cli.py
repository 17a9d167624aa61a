"""What `gateway token issue` and `gateway token revoke` do (argument parsing is in cli.py)."""

from __future__ import annotations

from gateway.authn.store import NO_BINDING, Binding
from gateway.authn.validator import TokenValidator
from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError
from gateway.redis_conn import RedisConnection, connect_redis

_NEEDS_REDIS = (
    "redis: `gateway token {}` needs a `redis:` section; without it tokens live only "
    "inside the serving process"
)


def _connect(cfg: GatewayConfig, command: str) -> RedisConnection:
    if cfg.redis is None:
        raise ConfigError([_NEEDS_REDIS.format(command)])
    return connect_redis(cfg.redis)


async def issue_token(
    cfg: GatewayConfig,
    grant: str,
    client_id: str,
    subject: str | None = None,
    scope: str = "",
    ttl: float | None = None,
    binding: Binding = NO_BINDING,
) -> str:
    """Mint an opaque token into the Redis store and return it; `binding` restricts it to
    audiences and binds it to a DPoP key or a certificate (store record `aud` / `cnf`).

    `ttl` None uses the grant's default lifetime (authorization_code 365 days, implicit 6 hours,
    others 1 hour). Raises ConfigError (no `redis:`), ValueError (unknown grant, ttl <= 0),
    StoreUnavailableError (Redis unreachable).
    """
    validator = TokenValidator.from_config(cfg, _connect(cfg, "issue"))
    try:
        return await validator.issue(grant, client_id, subject, scope, ttl, binding)
    finally:
        await validator.close()


async def revoke_token(cfg: GatewayConfig, token: str) -> None:
    """Revoke a token everywhere, as `DELETE session_path` does.

    Raises ConfigError (no `redis:`) or StoreUnavailableError (Redis unreachable). A configured
    `revocation_url` is called before returning (failures are logged, not raised).
    """
    validator = TokenValidator.from_config(cfg, _connect(cfg, "revoke"))
    try:
        await validator.start()
        await validator.revoke(token)
    finally:
        await validator.close()
