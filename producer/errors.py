"""Exceptions a producer raises: each says what happened and what to look at."""

from __future__ import annotations


class EmbedqError(Exception):
    """Base class of every embedq producer error."""


class InvalidInput(EmbedqError, ValueError):
    """An argument the producer refuses before sending anything (a text that is not a string or
    cannot be encoded as UTF-8, an unknown kind)."""


class EmbeddingTimeout(EmbedqError, TimeoutError):
    """No reply arrived within the timeout: no worker is running, or the workers are behind."""

    def __init__(self, waited: float, queue: str, pending: int, reason: str = "") -> None:
        why = reason or (
            "check that a worker is running against this Redis and queue (embedq status), "
            "or add workers if they are behind"
        )
        super().__init__(
            f"no reply from an embedding worker after {waited:.2f}s "
            f"({pending} request(s) unanswered on queue {queue!r}); {why}"
        )
        self.waited = waited
        self.queue = queue
        self.pending = pending


class EmbeddingError(EmbedqError):
    """The worker refused the request or could not encode it; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class EmbeddingConnectionError(EmbedqError, ConnectionError):
    """Redis could not be reached, or the connection broke during a call."""


class QueueFull(EmbedqError):
    """The request queue is at its cap: the workers are far behind; back off or add workers."""

    def __init__(self, queue: str, depth: int, limit: int) -> None:
        super().__init__(
            f"queue {queue!r} holds {depth} requests, at its cap of {limit}: the workers are behind; "
            "retry later or add workers"
        )
        self.queue = queue
        self.depth = depth
        self.limit = limit
