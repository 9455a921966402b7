"""One embedding call's bookkeeping, shared by the sync and asyncio clients.

A call is one or more requests (texts split by max-batch) with one deadline. The clients only
do I/O: push ``payloads()``, then pop from ``pending_keys()`` until ``done``; this class checks
each reply and puts the vectors back in input order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import numpy as np
import redis.exceptions

from .errors import EmbeddingConnectionError, EmbeddingError, EmbeddingTimeout, EmbedqError, QueueFull
from .protocol import Keys, Reply, build_requests, unpack_reply

MIN_WAIT = 0.001
"""Below this many seconds left a call counts as timed out (BLPOP's 0 would mean 'forever')."""

ENQUEUE_SCRIPT = """
local depth = redis.call('LLEN', KEYS[1])
local limit = tonumber(ARGV[1])
if limit > 0 and depth >= limit then return -1 - depth end
return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
"""
"""RPUSH unless the queue already holds ``limit`` requests (then -1 - depth): one round trip."""
PUSH_SLICE = 1000
"""Payloads per script call (Lua's unpack has a stack limit)."""


def push_slices(payloads: Sequence[bytes], limit: int | None) -> Iterator[list[bytes | int]]:
    """Script arguments for pushing ``payloads``: the limit, then up to PUSH_SLICE payloads."""
    for i in range(0, len(payloads), PUSH_SLICE):
        yield [limit or 0, *payloads[i : i + PUSH_SLICE]]


def check_pushed(result: int, queue: str, limit: int | None) -> None:
    """Raise ``QueueFull`` if the enqueue script refused."""
    if result < 0:
        raise QueueFull(queue, -1 - result, limit or 0)


class Call:
    """The requests of one embedding call and the replies gathered so far."""

    def __init__(
        self, texts: Sequence[str], kind: str, *, keys: Keys, max_batch: int, timeout: float
    ) -> None:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        self.keys = keys
        self.timeout = timeout
        self.started = time.monotonic()
        self.requests = build_requests(texts, kind, max_batch=max_batch, timeout=timeout)
        self._slot = {keys.reply(r.id): i for i, r in enumerate(self.requests)}
        self.replies: list[Reply | None] = [None] * len(self.requests)
        """Each request's reply once answered: timings, batch size and worker, for monitoring."""

    def payloads(self) -> list[bytes]:
        """The packed requests, in input order, for one RPUSH."""
        return [r.pack() for r in self.requests]

    def pending_keys(self) -> list[str]:
        """Reply keys still unanswered."""
        return [k for k, i in self._slot.items() if self.replies[i] is None]

    @property
    def done(self) -> bool:
        """True once every request has its vectors."""
        return all(r is not None for r in self.replies)

    def remaining(self) -> float:
        """Seconds left before the deadline; raises ``EmbeddingTimeout`` when none are."""
        left = self.timeout - (time.monotonic() - self.started)
        if left < MIN_WAIT:
            raise EmbeddingTimeout(time.monotonic() - self.started, self.keys.queue, len(self.pending_keys()))
        return left

    def accept(self, key: bytes | str, raw: bytes) -> None:
        """Take one popped reply; an error reply raises ``EmbeddingError``."""
        name = key.decode() if isinstance(key, bytes) else key
        slot = self._slot.get(name)
        if slot is None:  # not ours: cannot happen with BLPOP on our own keys
            return
        reply = unpack_reply(raw)
        if not reply.ok:
            raise EmbeddingError(reply.code or "error", reply.message or "", reply.id)
        expected = len(self.requests[slot].texts)
        if reply.vectors is None or len(reply.vectors) != expected:
            raise EmbeddingError(
                "bad_reply",
                f"worker returned {0 if reply.vectors is None else len(reply.vectors)} "
                f"vectors for {expected} texts",
                reply.id,
            )
        self.replies[slot] = reply

    def result(self) -> np.ndarray:
        """All vectors as one float32 matrix, rows in input order."""
        parts = [r.vectors for r in self.replies if r is not None and r.vectors is not None]
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.vstack(parts)


def describe(connection_kwargs: dict[str, object]) -> str:
    """Where a client connects, for error messages (never includes a password)."""
    if "path" in connection_kwargs:
        return f"unix:{connection_kwargs['path']}"
    host = connection_kwargs.get("host", "localhost")
    port = connection_kwargs.get("port", 6379)
    db = connection_kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}"


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Turn redis-py exceptions into embedq ones that say which Redis failed."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise EmbeddingConnectionError(
            f"cannot talk to Redis at {where}: {exc}. Is redis-server running and REDIS_URL right?"
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise EmbedqError(f"Redis at {where} refused a command: {exc}") from exc
