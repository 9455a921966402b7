"""What became of one batch: replies, dead letters and retries, gathered in memory by the
admission, window and encode steps, then written to Redis in one atomic script (``lane``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from embedq.protocol import Reply

from .cache import Cacheable

DEAD_RAW_BYTES = 4096
"""How much of an unanswerable request the dead-letter entry keeps."""


@dataclass(frozen=True)
class DeadLetter:
    """A request that cannot be answered, kept for a person to look at."""

    reason: str
    code: str
    raw: bytes
    worker: str
    request_id: str | None = None

    def pack(self) -> bytes:
        """The msgpack map stored in the dead-letter list (its time is the Redis server's)."""
        return msgpack.packb(
            {
                "id": self.request_id,
                "code": self.code,
                "reason": self.reason,
                "raw": self.raw[:DEAD_RAW_BYTES],
                "raw_size": len(self.raw),
                "worker": self.worker,
            },
            use_bin_type=True,
        )


@dataclass
class Outcomes:
    """Everything one batch produced, in the order it was decided; ``worker`` signs the errors."""

    worker: str
    model: str = ""
    """The served name every reply of the batch names."""
    fingerprint: str = ""
    """The fingerprint every reply of the batch names."""
    replies: list[Reply] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    """One outcome per reply, in ``replies`` order (``ok``, ``error``, ``late``, ``dead``)."""
    deadlines: list[int] = field(default_factory=list)
    """Each reply's request deadline (Redis ms), in ``replies`` order; 0 for errors."""
    dead: list[DeadLetter] = field(default_factory=list)
    retry: list[bytes] = field(default_factory=list)
    """Raw requests to put at the back of their list (their encode failed; attempts remain)."""
    cacheable: list[Cacheable] = field(default_factory=list)
    """Texts answered whole (not cut), for the query cache once the replies are out."""

    def reply(self, reply: Reply, outcome: str, deadline_ms: int = 0) -> None:
        """Add a reply and what it counts as."""
        self.replies.append(reply)
        self.counts.append(outcome)
        self.deadlines.append(deadline_ms)

    def error(self, request_id: str, code: str, message: str, outcome: str = "error") -> None:
        """Add an error reply to one request."""
        reply = Reply(
            id=request_id,
            code=code,
            message=message,
            worker=self.worker,
            model=self.model,
            fingerprint=self.fingerprint,
        )
        self.reply(reply, outcome)
