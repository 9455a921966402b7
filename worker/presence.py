"""Worker heartbeats: how the reaper, ``health`` and operators tell a live worker from a dead one.

Each worker registers its id in the ``<ns>:workers`` set and keeps ``<ns>:heartbeat:<id>``
alive with a short expiry. A thread of its own writes it (every quarter of the expiry), so a
long encode never looks like death while a killed process stops beating at once; the same
thread runs the reaper pass and checks Redis's eviction policy. The heartbeat's value describes
the worker (model, settings, counters, Redis trouble); its times are the Redis server's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import redis

from embedq.clock import RedisClock
from embedq.protocol import Heartbeat, Keys
from embedq.workers import eviction_warning, read_policy

from .redis_errors import RedisGuard

log = logging.getLogger("embedq.worker")

HEARTBEAT_SCRIPT = """
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return redis.call('TIME')
"""
"""Write the heartbeat (KEYS[1]) and register the worker (KEYS[2]); returns Redis TIME. The
PEXPIRE comes first so that the beat still goes through when Redis is at maxmemory: a worker
that cannot answer is still alive, and must not be reaped."""

POLICY_EVERY_S = 60.0
"""How often the eviction policy is read again."""


class Presence:
    """Writes one worker's heartbeat; with ``start()``, from a thread that also reaps."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        *,
        ttl: float,
        info: Callable[[], Heartbeat] | None = None,
        reap: Callable[[], object] | None = None,
        reap_interval: float = 1.0,
        guard: RedisGuard | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.worker_id = worker_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self.interval = ttl / 4
        self.info = info or (lambda: Heartbeat(worker=worker_id))
        self.reap = reap
        self.reap_interval = reap_interval
        self.guard = guard or RedisGuard()
        self.started_ms: int | None = None
        self.policy: str | None = None
        self.beats = 0
        self.clock = RedisClock(refresh_s=0.0)
        """Redis time, renewed by every beat (the heartbeat script returns it)."""
        self._script = client.register_script(HEARTBEAT_SCRIPT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Write the heartbeat now and register the worker."""
        info = self.info()
        body = replace(
            info,
            worker=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_ms=self.started_ms,
            beat_ms=self.clock.now_ms() if self.beats else None,
            maxmemory_policy=self.policy,
            redis_trouble=info.redis_trouble or self.guard.report(),
        )
        packed = body.pack()
        sent = time.monotonic()
        now = self._script(
            keys=[self.keys.heartbeat(self.worker_id), self.keys.workers],
            args=[packed, self.ttl_ms, self.worker_id],
        )
        self.clock.update(now, sent, time.monotonic())
        if self.started_ms is None:
            self.started_ms = self.clock.now_ms()
        self.beats += 1

    def check_policy(self) -> None:
        """Read the eviction policy; warn when it changes to one that may lose requests."""
        try:
            policy = read_policy(self.redis)
        except redis.exceptions.ResponseError as exc:  # INFO refused (an ACL, a managed Redis)
            if self.policy != "unknown":
                log.warning("cannot read Redis's maxmemory-policy (%s): make sure it is noeviction", exc)
            self.policy = "unknown"
            return
        if policy != self.policy:
            warning = eviction_warning(policy)
            if warning:
                log.warning(warning)
        self.policy = policy

    def start(self) -> None:
        """Beat, reap and watch the eviction policy from a daemon thread until ``stop()``."""
        self._thread = threading.Thread(target=self._run, name="embedq-presence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after its current step)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        next_reap = next_policy = 0.0
        while not self._stop.is_set():
            wait = self.interval
            try:
                self.beat()
                now = time.monotonic()
                if now >= next_policy:
                    next_policy = now + POLICY_EVERY_S
                    self.check_policy()
                if self.reap is not None and now >= next_reap:
                    next_reap = now + self.reap_interval
                    self.reap()
                self.guard.recovered()
            except Exception as exc:  # never let the heartbeat thread die
                wait = min(self.interval, self.guard.failed(exc, "writing the heartbeat or reaping"))
            if self._stop.wait(wait):
                break

    def leave(self) -> None:
        """Deregister on a clean exit: nothing is left for a reaper to do."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.heartbeat(self.worker_id))
        pipe.srem(self.keys.workers, self.worker_id)
        pipe.execute()
