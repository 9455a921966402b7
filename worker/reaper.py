"""The reaper: returns the requests of dead workers to the queue, and gives up on poison ones.

A worker whose heartbeat has expired died or hung while holding requests in its processing
lists (online and bulk). The reaper moves them back to the front of their request list, oldest
first, counting an attempt for each; a request that has used up its attempts goes to the
dead-letter list and its producer gets an error instead, so a request that kills workers
cannot crash-loop them.
Every worker runs a pass from its heartbeat thread; ``embedq-worker reap`` runs one by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from embedq.protocol import WAKE_TOKENS_MAX, Keys, Reply, peek_id
from embedq.workers import dead_workers

from .lane import ReplyWriter
from .outcomes import DeadLetter

log = logging.getLogger("embedq.reaper")

LOCK_MS = 30_000
"""How long one reaper may hold a dead worker's list before another may take over."""


@dataclass
class ReapReport:
    """What one pass did."""

    workers: list[str] = field(default_factory=list)
    requeued: int = 0
    dead: int = 0


class Reaper:
    """Finds dead workers of one queue and returns what they held."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        max_attempts: int,
        reply_ttl: int,
        dead_max: int,
        me: str = "reaper",
    ) -> None:
        self.redis = client
        self.keys = keys
        self.max_attempts = max_attempts
        self.me = me
        self.writer = ReplyWriter(client, keys, reply_ttl=reply_ttl, dead_max=dead_max, worker=me)

    def reap_once(self) -> ReapReport:
        """One pass over every registered worker whose heartbeat has expired."""
        report = ReapReport()
        for worker_id in dead_workers(self.redis, self.keys):
            if worker_id == self.me or not self._lock(worker_id):
                continue  # ourselves, or another reaper is on it
            try:
                requeued, dead = self._reap(worker_id)
            finally:
                self.redis.delete(self.keys.reaping(worker_id))
            report.workers.append(worker_id)
            report.requeued += requeued
            report.dead += dead
            if requeued or dead:
                log.warning(
                    "worker %s is gone: put %d request(s) back on the queue, dead-lettered %d",
                    worker_id,
                    requeued,
                    dead,
                )
        return report

    def _lock(self, worker_id: str) -> bool:
        """Take the reaping lock of one dead worker; a lock without expiry (not one of ours) is
        removed rather than allowed to block reaping forever."""
        lock = self.keys.reaping(worker_id)
        if self.redis.set(lock, self.me, nx=True, px=LOCK_MS):
            return True
        if self.redis.pttl(lock) == -1:
            log.warning("removed %r: a reaping lock without expiry, which no reaper writes", lock)
            self.redis.delete(lock)
        return False

    def _reap(self, worker_id: str) -> tuple[int, int]:
        requeued = dead = 0
        for queue, processing in self.keys.lanes(worker_id):  # online, then bulk
            while (found := self.redis.lindex(processing, -1)) is not None:
                raw = bytes(found) if not isinstance(found, str) else found.encode()
                request_id = peek_id(raw)
                attempts = self.writer.count_attempts([request_id])[0] if request_id else 0
                if request_id and attempts >= self.max_attempts:
                    self._give_up(processing, queue, raw, request_id, worker_id, attempts)
                    dead += 1
                else:
                    # newest first onto the head, so the oldest ends up first in line
                    self.redis.lmove(processing, queue, "RIGHT", "LEFT")
                    requeued += 1
        pipe = self.redis.pipeline(transaction=False)
        if requeued:
            pipe.rpush(self.keys.wake, *([1] * min(requeued, WAKE_TOKENS_MAX)))
            pipe.ltrim(self.keys.wake, -WAKE_TOKENS_MAX, -1)
        pipe.srem(self.keys.workers, worker_id)
        pipe.delete(self.keys.heartbeat(worker_id))
        pipe.execute()
        return requeued, dead

    def _give_up(
        self, processing: str, queue: str, raw: bytes, request_id: str, worker_id: str, attempts: int
    ) -> None:
        message = (
            f"request was being encoded {attempts} times when its worker died or hung "
            f"(last: {worker_id}); it is in the dead-letter list {self.keys.dead!r}"
        )
        reply = Reply(id=request_id, code="worker_died", message=message, worker=self.me)
        entry = DeadLetter(message, "worker_died", raw, self.me, request_id)
        self.writer.write(processing, queue=queue, replies=[reply], done=[raw], dead=[entry])
