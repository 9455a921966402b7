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

from embedq.protocol import Keys, Limits, Rejected, Reply, Request, parse_request

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


TAKE_SCRIPT = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""
"""Move up to ARGV[1] requests from the queue (KEYS[1]) to a processing list (KEYS[2]), FIFO."""

FINISH_SCRIPT = """
local ttl, dead_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_reply, n_attempts = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_done, n_retry, n_dead = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 8
for k = 1, n_reply do
  redis.call('RPUSH', KEYS[3 + k], ARGV[i])
  redis.call('EXPIRE', KEYS[3 + k], ttl)
  i = i + 1
end
for k = 1, n_done do redis.call('LREM', KEYS[1], 1, ARGV[i]); i = i + 1 end
for k = 1, n_retry do redis.call('RPUSH', KEYS[2], ARGV[i]); i = i + 1 end
for k = 1, n_dead do redis.call('LPUSH', KEYS[3], ARGV[i]); i = i + 1 end
if n_dead > 0 then redis.call('LTRIM', KEYS[3], 0, dead_max - 1) end
for k = 1, n_attempts do redis.call('DEL', KEYS[3 + n_reply + k]) end
return n_reply
"""
"""Atomically: write replies with their expiry, drop answered requests from a processing list
(KEYS[1]), requeue retries at the back of their request list (KEYS[2]), add dead letters (capped)
and clear their attempt counters."""


class Outcomes:
    """Writes what became of a batch in one atomic script call (one round trip)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, reply_ttl: int, dead_max: int) -> None:
        self.keys = keys
        self.reply_ttl = reply_ttl
        self.dead_max = dead_max
        self._script = client.register_script(FINISH_SCRIPT)

    def write(
        self,
        processing: str,
        *,
        queue: str,
        replies: Sequence[Reply] = (),
        done: Sequence[bytes] = (),
        retry: Sequence[bytes] = (),
        dead: Sequence[DeadLetter] = (),
    ) -> None:
        """Replies, removal of ``done`` from ``processing``, retries onto ``queue`` and dead
        letters, atomically."""
        cleared = [d.request_id for d in dead if d.request_id]
        keys = [processing, queue, self.keys.dead]
        keys += [self.keys.reply(r.id) for r in replies]
        keys += [self.keys.attempts(rid) for rid in cleared]
        args: list[bytes | int] = [
            self.reply_ttl,
            self.dead_max,
            len(replies),
            len(cleared),
            len(done),
            len(retry),
            len(dead),
        ]
        args += [r.pack() for r in replies]
        args += [*done, *retry]
        args += [d.pack() for d in dead]
        self._script(keys=keys, args=args)


class RedisQueue:
    """Takes requests from one request list (a lane: online or bulk) into this worker's
    processing list for it, and answers them atomically."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        *,
        limits: Limits,
        reply_ttl: int,
        dead_max: int,
        bulk: bool = False,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.worker_id = worker_id
        self.lane = "bulk" if bulk else "online"
        online, bulk_lane = keys.lanes(worker_id)
        self.source, self.processing = bulk_lane if bulk else online
        self.limits = limits
        self.reply_ttl = reply_ttl
        self.dead_max = dead_max
        self.outcomes = Outcomes(client, keys, reply_ttl=reply_ttl, dead_max=dead_max)
        self._take = client.register_script(TAKE_SCRIPT)

    def take(self, limit: int, *, block: float) -> list[Taken]:
        """Up to ``limit`` requests, FIFO. ``block`` = 0: what is queued, one round trip (the
        loop's way under load). ``block`` > 0: wait up to that long for a first one (the loop
        asks only after finding the list empty), then take what followed it."""
        if block <= 0:
            raws: list[bytes] = list(self._take(keys=[self.source, self.processing], args=[limit]))
        else:
            first = self.redis.blmove(self.source, self.processing, block, "LEFT", "RIGHT")
            if first is None:
                return []
            raws = [first]
            if limit > 1:
                raws.extend(self._take(keys=[self.source, self.processing], args=[limit - 1]))
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
        """In one atomic step: write the replies (with their expiry) and dead letters, put
        ``retry`` at the back of the queue, and drop ``done`` from the processing list."""
        self.outcomes.write(
            self.processing,
            queue=self.source,
            replies=replies,
            done=[t.raw for t in done],
            retry=[t.raw for t in retry],
            dead=dead,
        )

    def count_attempts(self, request_ids: Sequence[str]) -> list[int]:
        """Add one failed attempt to each request; returns their totals."""
        pipe = self.redis.pipeline(transaction=True)
        for rid in request_ids:
            pipe.incr(self.keys.attempts(rid))
            pipe.expire(self.keys.attempts(rid), ATTEMPTS_TTL_S)
        return [int(n) for n in pipe.execute()[::2]]

    def put_back(self, items: Sequence[Taken]) -> None:
        """Return taken-but-unanswered requests to the head of their list, in their order."""
        if not items:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.source, *(t.raw for t in reversed(items)))
        for item in items:
            pipe.lrem(self.processing, 1, item.raw)
        pipe.execute()

    def recover(self) -> int:
        """Move whatever this worker id left in its processing list (a crash, a restart with the
        same id) back to the head of the request list; returns how many."""
        moved = 0
        while self.redis.lmove(self.processing, self.source, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved

    def depth(self) -> int:
        """Requests waiting in this lane's request list."""
        return int(self.redis.llen(self.source))
