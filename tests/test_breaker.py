"""The per-source circuit breaker: a dead IdP is not hammered, and recovery is found by a probe."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.authn.breaker import CircuitBreaker
from gateway.errors import ValidatorUnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_probes_once_after_cooldown():
    """Closed until `threshold` failures; then one probe per cool-down, which doubles."""
    clock = Clock()
    b = CircuitBreaker(threshold=3, cooldown=1.0, max_cooldown=4.0, clock=clock)
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.is_open
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    b.failure()  # probe failed: open again for 2 s
    clock.now += 1.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()
    b.success()
    assert not b.is_open
    assert b.allow()


async def test_dead_idp_is_not_asked_on_every_request(idp, make_validator):
    """With the IdP failing, 30 unseen tokens cost 5 introspection calls, all answered 503."""
    idp.introspect_mode = "fail"
    v = await make_validator([idp.introspection_source()])
    for i in range(30):
        with pytest.raises(ValidatorUnavailableError):
            await v.validate(f"unseen-{i}")
    assert idp.introspect_calls == 5
    idp.introspect_mode = "ok"
    idp.tokens["back"] = {
        "client_id": "c",
        "sub": "s",
        "scope": "",
        "grant_type": "implicit",
        "exp": int(time.time()) + 600,
    }
    deadline = time.monotonic() + 3
    while True:
        try:
            info = await v.validate("back")
            break
        except ValidatorUnavailableError:
            assert time.monotonic() < deadline, "breaker never let a probe through"
            await asyncio.sleep(0.1)
    assert info.subject == "s"
