"""The Redis server's clock, as a producer sees it: deadlines are stamped in Redis time.

Hosts disagree about the time (a producer 5 s behind a worker used to get every request dropped
as expired). So requests carry deadlines on the one clock every party shares: Redis's ``TIME``.
A client asks for it once per ``REFRESH_S`` and between asks adds its own monotonic time, which
never jumps; the estimate is off by at most half a round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

REFRESH_S = 30.0
"""How often the offset to the Redis clock is measured again (drift between asks is tiny)."""


def time_reply_ms(reply: Sequence[int | bytes | str]) -> int:
    """Milliseconds from a Redis ``TIME`` reply (seconds, microseconds)."""
    seconds, micros = (int(x) for x in reply)
    return seconds * 1000 + micros // 1000


class RedisClock:
    """Redis time in ms, estimated from the last ``TIME`` and this process's monotonic clock."""

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self._offset_ms = 0.0
        self._synced = -math.inf

    def stale(self) -> bool:
        """True when ``TIME`` should be asked again before stamping a request."""
        return time.monotonic() - self._synced >= self.refresh_s

    def update(self, reply: Sequence[int | bytes | str], sent: float, received: float) -> None:
        """Take a ``TIME`` reply asked at monotonic ``sent`` and received at ``received``."""
        middle = (sent + received) / 2
        self._offset_ms = time_reply_ms(reply) - middle * 1000.0
        self._synced = received

    def sync(self, client: Any) -> None:
        """Ask a redis-py client for ``TIME`` if the estimate is stale."""
        if self.stale():
            sent = time.monotonic()
            reply = client.time()
            self.update(reply, sent, time.monotonic())

    async def sync_async(self, client: Any) -> None:
        """``sync`` for an asyncio redis-py client."""
        if self.stale():
            sent = time.monotonic()
            reply = await client.time()
            self.update(reply, sent, time.monotonic())

    def now_ms(self) -> int:
        """The Redis server's time now, in ms."""
        return int(time.monotonic() * 1000.0 + self._offset_ms)
