"""Liveness of the worker's own loop, apart from Redis: the loop touches a file on every turn
(``EMBED_ALIVE_FILE``), and ``embedq-worker health --live`` checks that file's age. A Redis
outage keeps the loop turning (it waits and retries), so a liveness probe built on this never
restarts every worker at once, each reloading its model, because Redis was away; a loop that
hangs (a stuck encode, a deadlock) stops touching the file and is restarted."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

TOUCH_EVERY_S = 1.0
"""The file's mtime is updated at most this often."""
MAX_AGE_S = 120.0
"""Default age past which ``health --live`` calls the loop stuck: well above the longest single
encode (a batch of the largest model at its token budget) and the reconnect backoff."""


class AliveFile:
    """Touches ``path`` from the loop (at most every ``TOUCH_EVERY_S``); a no-op without a path."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._last = -1e9

    def touch(self) -> None:
        """Mark the loop alive now (errors writing the file are ignored: never a reason to stop)."""
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last < TOUCH_EVERY_S:
            return
        self._last = now
        with contextlib.suppress(OSError):
            self.path.touch()


def check_alive(path: str, max_age_s: float = MAX_AGE_S) -> tuple[bool, str]:
    """(alive, a line saying why) for the loop that touches ``path``."""
    if not path:
        return False, "unhealthy: EMBED_ALIVE_FILE is not set, so the loop's liveness is not recorded"
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return False, f"unhealthy: {path} does not exist yet (the worker is starting, or never ran)"
    if age > max_age_s:
        return False, f"unhealthy: the worker's loop last turned {age:.0f}s ago (limit {max_age_s:.0f}s)"
    return True, f"alive: the worker's loop turned {age:.1f}s ago"
