"""A per-source circuit breaker: a dead IdP is not asked again on every request.

After `threshold` consecutive failures the breaker opens: lookups fail fast (503) for a
cool-down that doubles up to `max_cooldown`; then one probe goes through, and its success
closes the breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed → (threshold failures) → open → (cool-down) → one probe → closed or open again."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._failures = 0
        self._cooldown = cooldown
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def allow(self) -> bool:
        """Whether a call may go out now (at most one probe while open)."""
        if self._failures < self.threshold:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._cooldown = self.base_cooldown
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self.threshold:
            self._open_until = self._clock() + self._cooldown
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
