"""TLS listener tests: a module may run its tests under several event loops by naming them in
`LOOPS` (the gateway runs on uvloop; the suite's default loop is asyncio's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

DEFAULT_LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    return getattr(module, "LOOPS", DEFAULT_LOOPS)
