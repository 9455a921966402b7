"""A circuit breaker for the query cache: after a few failures in a row the cache is left alone
for a while (doubling up to a cap), then tried again with one call. A cache that is down or
blackholed then costs one short timeout per pause, not one per call."""

from __future__ import annotations

import time
from collections.abc import Callable

BREAK_AFTER = 3
"""Failures in a row that open the breaker."""
PAUSE_S = 2.0
"""The first pause; each failed trial doubles it up to ``MAX_PAUSE_S``."""
MAX_PAUSE_S = 60.0


class Breaker:
    """Counts failures in a row; ``closed()`` is False while the cache should not be tried."""

    def __init__(
        self,
        after: int = BREAK_AFTER,
        pause_s: float = PAUSE_S,
        max_pause_s: float = MAX_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.after = after
        self.first_pause = pause_s
        self.max_pause = max_pause_s
        self.clock = clock
        self.failures = 0
        self.pause = pause_s
        self.open_until = -1.0
        self.opened = 0
        """Times the breaker opened (for metrics and tests)."""

    def closed(self) -> bool:
        """True when a call may use the cache (always, unless a pause is running)."""
        return self.clock() >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.pause = self.first_pause

    def failure(self) -> None:
        """One more failure in a row: at ``after`` (or on a failed trial) a pause starts."""
        self.failures += 1
        if self.failures >= self.after:
            self.open_until = self.clock() + self.pause
            self.pause = min(self.pause * 2, self.max_pause)
            self.opened += 1
