"""What a worker does about a Redis error: name it, say what the operator must do, back off.

Connection loss means reconnect. Every other error Redis can send (out of memory, a missing ACL
permission, a read-only replica, a dataset still loading, a stray key of the wrong type) is about
Redis, not about one request: the worker logs it once with the fix, keeps what it holds in Redis,
backs off and tries again, and reports it in its heartbeat, health check and metrics. Nothing
Redis answers ends a worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from embedq.connection import Backoff
from embedq.protocol import shorten
from embedq.topology import CLUSTER_UNSUPPORTED, clustered

log = logging.getLogger("embedq.worker")

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
"""Cap of the wait between attempts while Redis refuses or cannot be reached."""

ADVICE = {
    "connection": "Redis cannot be reached: is redis-server running and REDIS_URL right? Reconnecting",
    "OOM": (
        "Redis is at its maxmemory and refuses writes (policy noeviction): raise maxmemory or free "
        "memory (embedq status shows the queues); the worker retries and loses nothing it holds"
    ),
    "NOPERM": (
        "the worker's Redis user lacks a permission it needs: give it the rules of "
        "`embedq acl --role worker` (embedq-worker keeps retrying)"
    ),
    "READONLY": (
        "REDIS_URL points at a read-only replica (or the primary was just demoted: the worker "
        "reconnects): point it at the primary, or use a Sentinel URL (redis+sentinel://...)"
    ),
    "LOADING": "Redis is loading its dataset after a restart: waiting until it is done",
    "MISCONF": "Redis cannot save to disk and refuses writes (MISCONF): fix its disk or its save settings",
    "BUSY": "a script runs too long inside Redis (BUSY): waiting for it to end",
    "MASTERDOWN": "the replica lost its primary (MASTERDOWN): waiting for the primary",
    "WRONGTYPE": (
        "a key of embedq's namespace holds a value of another type (written by something else?): "
        "delete that key"
    ),
    "NOSCRIPT": "Redis lost its scripts (a restart or SCRIPT FLUSH): loading them again",
    "CLUSTER": CLUSTER_UNSUPPORTED,
}


def classify(exc: BaseException) -> str:
    """A short name for a Redis error: ``connection``, the error's own prefix (``OOM``,
    ``NOPERM``, ``WRONGTYPE``...), or ``ERR`` for anything else."""
    if isinstance(exc, redis.exceptions.BusyLoadingError):  # a ConnectionError in redis-py: first
        return "LOADING"
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return "connection"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "NOPERM"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "READONLY"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "OOM"
    if isinstance(exc, redis.exceptions.NoScriptError):
        return "NOSCRIPT"
    if clustered(exc):
        return "CLUSTER"
    text = str(exc)
    if "NOPERM" in text or "can't run this command" in text or "no permissions" in text:
        return "NOPERM"
    for code in ADVICE:
        if code != "connection" and (text.startswith(code) or f" {code} " in text or f"-{code}" in text):
            return code
    return "ERR" if isinstance(exc, redis.exceptions.RedisError) else type(exc).__name__


@dataclass
class Trouble:
    """The error a worker is in the middle of, for its heartbeat and health check."""

    code: str
    message: str
    since: float
    count: int = 1

    def as_dict(self) -> dict[str, object]:
        """As reported in the heartbeat."""
        return {
            "code": self.code,
            "message": self.message,
            "for_s": round(time.monotonic() - self.since, 1),
            "count": self.count,
        }


class RedisGuard:
    """Tracks Redis trouble for one worker: logs each kind once per episode, counts every
    error, and says how long to back off. Shared by the loop and the heartbeat thread."""

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        self.trouble: Trouble | None = None
        self.total = 0
        self._lock = threading.Lock()
        self._backoff = Backoff(BACKOFF_START_S, BACKOFF_MAX_S)
        self._on_error = on_error

    def failed(self, exc: BaseException, where: str) -> float:
        """Record an error seen while doing ``where``; returns the seconds to wait before the
        next attempt (growing, capped)."""
        code = classify(exc)
        message = shorten(str(exc), 300)
        with self._lock:
            self.total += 1
            fresh = self.trouble is None or self.trouble.code != code
            if fresh:
                self.trouble = Trouble(code, message, time.monotonic())
                self._backoff.reset()
            else:
                assert self.trouble is not None
                self.trouble.count += 1
                self.trouble.message = message
            delay = self._backoff.next()
        if self._on_error is not None:
            self._on_error(code)
        if fresh:
            advice = ADVICE.get(code, "unexpected; retrying with backoff")
            kind = "Redis error" if isinstance(exc, redis.exceptions.RedisError) else "error"
            log.error("%s while %s: %s. %s", kind, where, message, advice)
        return delay

    def recovered(self) -> None:
        """Call after a successful round trip: ends the episode (logged once)."""
        if self.trouble is None:
            return
        with self._lock:
            trouble, self.trouble = self.trouble, None
            self._backoff.reset()
        if trouble is not None:
            log.warning(
                "Redis answers again after %.1f s of %s (%d error(s)); serving",
                time.monotonic() - trouble.since,
                trouble.code,
                trouble.count,
            )

    def report(self) -> dict[str, object] | None:
        """The current trouble for the heartbeat, or None."""
        trouble = self.trouble
        return trouble.as_dict() if trouble is not None else None
