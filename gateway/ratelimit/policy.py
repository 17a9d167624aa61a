"""Rate-limit policies as a route applies them, compiled once from the config (`Route.limits`)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config.models import GatewayConfig, RateLimitConfig, parse_rate


class LimitPolicy:
    """One named policy as a route applies it: its key parts, rate and burst, per-app
    overrides (by client_id) and the `RateLimit-Policy` member it announces."""

    def __init__(
        self,
        name: str,
        keys: tuple[str, ...],
        interval: float,
        burst: int,
        overrides: dict[str, tuple[float, int]],
    ) -> None:
        self.name = name
        self.keys = keys
        self.needs_identity = any(k in ("client_id", "sub", "grant") for k in keys)
        self.uses_ip = "ip" in keys
        self.interval = interval  # seconds per request: period / N
        self.burst = burst
        self.overrides = overrides

    @classmethod
    def from_config(cls, name: str, pc: RateLimitConfig, cfg: GatewayConfig) -> LimitPolicy:
        n, period = parse_rate(pc.rate)
        overrides: dict[str, tuple[float, int]] = {}
        for app in cfg.apps:
            ov = app.rate_limits.get(name)
            if ov is None:
                continue
            if ov.rate is not None:
                on, operiod = parse_rate(ov.rate)
                overrides[app.client_id] = (operiod / on, ov.burst or on)
            else:
                overrides[app.client_id] = (period / n, ov.burst or pc.burst or n)
        return cls(name, tuple(pc.key), period / n, pc.burst or n, overrides)


class RoutePolicies:
    """The rate limits of one route, compiled once (`Route.limits`); all must allow."""

    def __init__(self, route: str, policies: tuple[LimitPolicy, ...]) -> None:
        self.route = route
        self.policies = policies
        self.uses_ip = any(p.uses_ip for p in policies)

    @classmethod
    def for_route(cls, route: str, names: Iterable[str], cfg: GatewayConfig) -> RoutePolicies:
        return cls(
            route,
            tuple(LimitPolicy.from_config(n, cfg.rate_limits[n], cfg) for n in names),
        )
