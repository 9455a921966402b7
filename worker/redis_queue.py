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
ATTEMPTS_TTL_S = 3600
"""A request's attempt counter outlives any sensible deadline, then goes by itself."""


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
    request_id: str | None = None

    def pack(self) -> bytes:
        """The msgpack map stored in the dead-letter list."""
        return msgpack.packb(
            {
                "id": self.request_id,
                "code": self.code,
                "reason": self.reason,
                "raw": self.raw[:DEAD_RAW_BYTES],
                "raw_size": len(self.raw),
                "worker": self.worker,
                "at": time.time(),
            },
            use_bin_type=True,
        )


def add_replies(pipe: redis.client.Pipeline, keys: Keys, replies: Sequence[Reply], ttl: int) -> None:
    """Queue the commands that write replies, each with its expiry, on ``pipe``."""
    for reply in replies:
        key = keys.reply(reply.id)
        pipe.rpush(key, reply.pack())
        pipe.expire(key, ttl)


def add_dead(pipe: redis.client.Pipeline, keys: Keys, dead: Sequence[DeadLetter], cap: int) -> None:
    """Queue the commands that add dead letters, keeping the list within ``cap``."""
    if dead:
        pipe.lpush(keys.dead, *(d.pack() for d in dead))
        pipe.ltrim(keys.dead, 0, cap - 1)


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

    def finish(
        self,
        done: Sequence[Taken],
        replies: Sequence[Reply],
        dead: Sequence[DeadLetter] = (),
        retry: Sequence[Taken] = (),
    ) -> None:
        """In one transaction: write the replies (with their expiry) and dead letters, put
        ``retry`` at the back of the queue, and drop ``done`` from the processing list."""
        pipe = self.redis.pipeline(transaction=True)
        add_replies(pipe, self.keys, replies, self.reply_ttl)
        add_dead(pipe, self.keys, dead, self.dead_max)
        if retry:
            pipe.rpush(self.keys.queue, *(t.raw for t in retry))
        for item in done:
            pipe.lrem(self.processing, 1, item.raw)
        for letter in dead:
            if letter.request_id:
                pipe.delete(self.keys.attempts(letter.request_id))
        pipe.execute()

    def count_attempts(self, request_ids: Sequence[str]) -> list[int]:
        """Add one failed attempt to each request; returns their totals."""
        pipe = self.redis.pipeline(transaction=True)
        for rid in request_ids:
            pipe.incr(self.keys.attempts(rid))
            pipe.expire(self.keys.attempts(rid), ATTEMPTS_TTL_S)
        return [int(n) for n in pipe.execute()[::2]]

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
