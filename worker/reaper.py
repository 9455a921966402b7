"""The reaper: returns the requests of dead workers to the queue, and gives up on poison ones.

A worker whose heartbeat has expired died or hung while holding requests in its processing
lists (online and bulk). The reaper moves them back to the front of their request list, oldest
first, counting an attempt for each; a request that has used up its attempts goes to the
dead-letter list and its producer gets an error instead, so a request that kills workers
cannot crash-loop them.
Every worker runs a pass now and then; ``embedq-worker reap`` runs one by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from embedq.protocol import Keys, Reply, peek_id

from .presence import dead_workers
from .redis_queue import ATTEMPTS_TTL_S, DeadLetter, Outcomes

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
        self.reply_ttl = reply_ttl
        self.dead_max = dead_max
        self.me = me
        self.outcomes = Outcomes(client, keys, reply_ttl=reply_ttl, dead_max=dead_max)

    def reap_once(self) -> ReapReport:
        """One pass over every registered worker whose heartbeat has expired."""
        report = ReapReport()
        for worker_id in dead_workers(self.redis, self.keys):
            if worker_id == self.me:
                continue
            lock = self.keys.reaping(worker_id)
            if not self.redis.set(lock, self.me, nx=True, px=LOCK_MS):
                continue  # another reaper is on it
            try:
                requeued, dead = self._reap(worker_id)
            finally:
                self.redis.delete(lock)
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

    def _reap(self, worker_id: str) -> tuple[int, int]:
        requeued = dead = 0
        for queue, processing in self.keys.lanes(worker_id):  # online, then bulk
            while (raw := self.redis.lindex(processing, -1)) is not None:
                request_id = peek_id(raw)
                attempts = self._count(request_id) if request_id else 0
                if request_id and attempts >= self.max_attempts:
                    self._give_up(processing, queue, raw, request_id, worker_id, attempts)
                    dead += 1
                else:
                    # newest first onto the head, so the oldest ends up first in line
                    self.redis.lmove(processing, queue, "RIGHT", "LEFT")
                    requeued += 1
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.keys.workers, worker_id)
        pipe.delete(self.keys.heartbeat(worker_id))
        pipe.execute()
        return requeued, dead

    def _count(self, request_id: str) -> int:
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(self.keys.attempts(request_id))
        pipe.expire(self.keys.attempts(request_id), ATTEMPTS_TTL_S)
        return int(pipe.execute()[0])

    def _give_up(
        self, processing: str, queue: str, raw: bytes, request_id: str, worker_id: str, attempts: int
    ) -> None:
        message = (
            f"request was being encoded {attempts} times when its worker died or hung "
            f"(last: {worker_id}); it is in the dead-letter list {self.keys.dead!r}"
        )
        reply = Reply(id=request_id, code="worker_died", message=message, worker=self.me)
        entry = DeadLetter(message, "worker_died", raw, self.me, request_id)
        self.outcomes.write(processing, queue=queue, replies=[reply], done=[raw], dead=[entry])
