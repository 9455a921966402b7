"""The worker's side of the Redis request list: take requests, write replies, put back.

Each request taken is moved (LMOVE) into this worker's processing list in the same step, and
removed from it only in the transaction that writes its reply, so a worker that dies holding a
batch leaves the requests in Redis, not in lost memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import redis

from producer.protocol import Keys, Limits, Rejected, Reply, Request, parse_request

DEAD_RAW_BYTES = 4096
"""How much of an unanswerable request the dead-letter entry keeps."""


@dataclass(frozen=True)
class Taken:
    """One raw request taken off the queue, parsed: either ``request`` or ``rejected`` is set."""

    raw: bytes
    taken_at: float
    request: Request | None = None
    rejected: Rejected | None = None

    @property
    def size(self) -> int:
        """Texts this item adds to a batch (0 for a refused request)."""
        return len(self.request.texts) if self.request is not None else 0


@dataclass(frozen=True)
class DeadLetter:
    """A request that cannot be answered, kept for a person to look at."""

    reason: str
    code: str
    raw: bytes
    worker: str

    def pack(self) -> bytes:
        """The msgpack map stored in the dead-letter list."""
        return msgpack.packb(
            {
                "code": self.code,
                "reason": self.reason,
                "raw": self.raw[:DEAD_RAW_BYTES],
                "raw_size": len(self.raw),
                "worker": self.worker,
                "at": time.time(),
            },
            use_bin_type=True,
        )


class RedisQueue:
    """Takes requests into this worker's processing list and answers them atomically."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        *,
        limits: Limits,
        reply_ttl: int,
        dead_max: int,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.worker_id = worker_id
        self.processing = keys.processing(worker_id)
        self.limits = limits
        self.reply_ttl = reply_ttl
        self.dead_max = dead_max

    def take(self, limit: int, *, block: float) -> list[Taken]:
        """Up to ``limit`` requests, FIFO; with ``block`` > 0 wait that long for the first."""
        raws: list[bytes] = []
        if block > 0:
            first = self.redis.blmove(self.keys.queue, self.processing, block, "LEFT", "RIGHT")
            if first is None:
                return []
            raws.append(first)
            limit -= 1
        if limit > 0:
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(limit):
                pipe.lmove(self.keys.queue, self.processing, "LEFT", "RIGHT")
            raws.extend(r for r in pipe.execute() if r is not None)
        now = time.time()
        return [self._parse(raw, now) for raw in raws]

    def _parse(self, raw: bytes, now: float) -> Taken:
        try:
            return Taken(raw=raw, taken_at=now, request=parse_request(raw, self.limits))
        except Rejected as rejected:
            return Taken(raw=raw, taken_at=now, rejected=rejected)

    def finish(self, done: Sequence[Taken], replies: Sequence[Reply], dead: Sequence[DeadLetter]) -> None:
        """In one transaction: write the replies (with their expiry), the dead letters, and drop
        ``done`` from the processing list."""
        pipe = self.redis.pipeline(transaction=True)
        for reply in replies:
            key = self.keys.reply(reply.id)
            pipe.rpush(key, reply.pack())
            pipe.expire(key, self.reply_ttl)
        if dead:
            pipe.lpush(self.keys.dead, *(d.pack() for d in dead))
            pipe.ltrim(self.keys.dead, 0, self.dead_max - 1)
        for item in done:
            pipe.lrem(self.processing, 1, item.raw)
        pipe.execute()

    def put_back(self, items: Sequence[Taken]) -> None:
        """Return taken-but-unanswered requests to the head of the queue, in their order."""
        if not items:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.keys.queue, *(t.raw for t in reversed(items)))
        for item in items:
            pipe.lrem(self.processing, 1, item.raw)
        pipe.execute()

    def recover(self) -> int:
        """Move whatever this worker id left in its processing list (a crash, a restart with the
        same id) back to the head of the queue; returns how many."""
        moved = 0
        while self.redis.lmove(self.processing, self.keys.queue, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved

    def depth(self) -> int:
        """Requests waiting in the queue."""
        return int(self.redis.llen(self.keys.queue))
