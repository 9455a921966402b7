"""The worker's side of the query cache (``EMBED_CACHE_URL``): store what it encoded.

After a batch's replies are out, each vector of a cached kind is handed to a writer thread
that stores it in the cache Redis under the model's fingerprint (``Keys.cache_entry``) with an
expiry; producers read it there (``embedq.cache``). A text cut to the token window is not
cached (its reply says it was cut, and a cache hit could not). The cache is an optimisation: a
failing or slow cache Redis costs a warning and a counter, never a reply and never the batch
thread's time. At start the worker refuses a cache Redis that can only grow: the queue's own
Redis under ``noeviction``, or any Redis under ``noeviction`` without ``maxmemory``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from embedq.breaker import Breaker
from embedq.connection import connect
from embedq.protocol import CacheEntry, Keys

from .settings import ENV, Settings, SettingsError

log = logging.getLogger("embedq.worker")

WARN_EVERY_S = 30.0
PENDING = 64
"""Batches of vectors waiting for the writer thread; more are dropped (the cache is a shortcut)."""
WRITE_TIMEOUT_S = 1.0
"""Connect and socket timeout of the cache client: the writer thread's wait, not a reply's."""


@dataclass(frozen=True)
class Cacheable:
    """One encoded text the cache may keep."""

    kind: str
    text: str
    vector: np.ndarray
    tokens: int


def cache_refusal(policy: str | None, maxmemory: int, same_as_queue: bool) -> str | None:
    """Why a Redis with this eviction policy cannot hold the cache, or None when it can."""
    if policy != "noeviction":
        return None
    if same_as_queue:
        return (
            "EMBED_CACHE_URL is the queue's own Redis, which runs maxmemory-policy noeviction: the "
            "cache would fill the memory that queued requests and replies need. Point it at a "
            "separate Redis with maxmemory and maxmemory-policy allkeys-lru"
        )
    if maxmemory == 0:
        return (
            "the cache Redis (EMBED_CACHE_URL) runs noeviction without maxmemory: the cache would "
            "grow without bound. Set maxmemory and maxmemory-policy allkeys-lru on it"
        )
    return None


class CacheWriter:
    """Stores one worker's vectors in the query cache, on a thread of its own: the batch thread
    only hands them over (``store`` never waits on the cache Redis). A queue of ``PENDING``
    batches absorbs a slow cache; beyond it, and while the breaker is open after failures in a
    row, vectors are dropped and counted (a cache miss later, never a late reply now)."""

    def __init__(
        self, client: redis.Redis, keys: Keys, fingerprint: str, *, kinds: Sequence[str], ttl_s: int
    ) -> None:
        self.redis = client
        self.keys = keys
        self.fingerprint = fingerprint
        self.kinds = tuple(kinds)
        self.ttl_ms = ttl_s * 1000
        self.writes = 0
        self.errors = 0
        self.dropped = 0
        self.breaker = Breaker()
        self.on_written: Callable[[int], None] | None = None
        """Told how many vectors each write stored (the worker's metrics counter)."""
        self._pending: queue.Queue[list[Cacheable] | None] = queue.Queue(maxsize=PENDING)
        self._warned_at = -1e9
        self._thread = threading.Thread(target=self._run, name="embedq-cache-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, fingerprint: str, queue: redis.Redis) -> CacheWriter | None:
        """The writer ``settings`` ask for (None when the cache is off); ``SettingsError`` for a
        cache Redis that may only grow (see ``cache_refusal``)."""
        if not settings.cache_url:
            return None
        if not fingerprint:
            log.warning("EMBED_CACHE_URL is set but this encoder reports no fingerprint: cache off")
            return None
        client = connect(settings.cache_url, socket_timeout=WRITE_TIMEOUT_S, connect_timeout=WRITE_TIMEOUT_S)
        try:
            memory = client.info("memory")
            same = client.info("server").get("run_id") == queue.info("server").get("run_id")
        except redis.exceptions.ResponseError as exc:  # INFO refused by an ACL
            log.warning("cannot read the cache Redis's eviction policy (%s): make sure it may evict", exc)
        except redis.exceptions.RedisError as exc:
            log.warning("the cache Redis (EMBED_CACHE_URL) is unreachable now (%s): caching when it is", exc)
        else:
            why = cache_refusal(
                memory.get("maxmemory_policy"), int(memory.get("maxmemory", 0) or 0), same_as_queue=same
            )
            if why:
                raise SettingsError(f"{why} ({ENV['cache_url']})")
        return cls(client, settings.keys, fingerprint, kinds=settings.cached_kinds, ttl_s=settings.cache_ttl)

    def store(self, items: Sequence[Cacheable]) -> int:
        """Hand the items of cached kinds to the writer thread without waiting; returns how many
        were handed over (0 while the breaker is open or the queue is full: those are dropped)."""
        wanted = [i for i in items if i.kind in self.kinds]
        if not wanted:
            return 0
        if not self.breaker.closed():
            self.dropped += len(wanted)
            return 0
        try:
            self._pending.put_nowait(wanted)
        except queue.Full:
            self.dropped += len(wanted)
            return 0
        return len(wanted)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until everything handed over was written or given up (tests, and a clean stop)."""
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._pending.unfinished_tasks

    def close(self) -> None:
        """Stop the writer thread after what is queued (a second at most)."""
        try:
            self._pending.put(None, timeout=1.0)
        except queue.Full:
            return
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while True:
            items = self._pending.get()
            try:
                if items is None:
                    return
                self._write(items)
            finally:
                self._pending.task_done()

    def _write(self, wanted: list[Cacheable]) -> None:
        if not self.breaker.closed():
            self.dropped += len(wanted)
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for item in wanted:
                pipe.set(
                    self.keys.cache_entry(self.fingerprint, item.kind, item.text),
                    CacheEntry(item.vector, item.tokens).pack(),
                    px=self.ttl_ms,
                )
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            self.errors += 1
            self.breaker.failure()
            now = time.monotonic()
            if now - self._warned_at > WARN_EVERY_S:
                self._warned_at = now
                log.warning("query cache write failed (replies are not affected): %s", exc)
            return
        self.breaker.success()
        self.writes += len(wanted)
        if self.on_written is not None:
            self.on_written(len(wanted))

    def stats(self) -> dict[str, Any]:
        """What the heartbeat reports: kinds, ttl, and this worker's writes, failed writes and
        dropped vectors. Hits are seen by producers only, each in its own stats (the shared
        cache Redis takes no counters from them: a producer could fake them)."""
        return {
            "kinds": list(self.kinds),
            "ttl_s": self.ttl_ms // 1000,
            "writes": self.writes,
            "errors": self.errors,
            "dropped": self.dropped,
        }
