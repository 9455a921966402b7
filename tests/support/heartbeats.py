"""Waiting for workers' heartbeats by polling, not by sleeping: a heartbeat's counts are fresh
once its ``beat_ms`` (Redis time) is later than the moment the test started waiting."""

from __future__ import annotations

import redis

from embedq.clock import time_reply_ms
from embedq.protocol import Keys
from embedq.tools.local import wait_until
from embedq.workers import live_workers


def fresh_heartbeats(client: redis.Redis, keys: Keys, *, workers: int = 1, timeout: float = 10.0) -> None:
    """Return once at least ``workers`` live workers of ``keys`` have beaten after now, so every
    count in their heartbeats includes what they did before this call."""
    since = time_reply_ms(client.time())

    def beaten() -> bool:
        beats = live_workers(client, keys).values()
        return sum(1 for b in beats if (b.beat_ms or 0) > since) >= workers

    wait_until(beaten, timeout, f"{workers} fresh heartbeat(s) on {keys.queue}", interval=0.05)
