"""The worker's side of the query cache (``EMBED_CACHE_URL``): store what it encoded.

After a batch's replies are out, each vector of a cached kind goes to the cache Redis under the
model's fingerprint (``Keys.cache_entry``) with an expiry; producers read it there
(``embedq.cache``). A text cut to the token window is not cached (its reply says it was cut,
and a cache hit could not). The cache is an optimisation: a failing cache Redis costs a warning
and a counter, never a reply. At start the worker refuses a cache Redis that can only grow: the
queue's own Redis under ``noeviction``, or any Redis under ``noeviction`` without ``maxmemory``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from embedq.connection import connect
from embedq.protocol import CacheEntry, Keys

from .settings import ENV, Settings, SettingsError

log = logging.getLogger("embedq.worker")

STATS_EVERY_S = 5.0
"""How often the shared hit/miss counts are read for the heartbeat and the metrics."""
WARN_EVERY_S = 30.0


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
    """Stores one worker's vectors in the query cache."""

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
        self._warned_at = -1e9
        self._stats: dict[str, Any] = {}
        self._stats_at = -1e9

    @classmethod
    def from_settings(cls, settings: Settings, fingerprint: str, queue: redis.Redis) -> CacheWriter | None:
        """The writer ``settings`` ask for (None when the cache is off); ``SettingsError`` for a
        cache Redis that may only grow (see ``cache_refusal``)."""
        if not settings.cache_url:
            return None
        if not fingerprint:
            log.warning("EMBED_CACHE_URL is set but this encoder reports no fingerprint: cache off")
            return None
        client = connect(settings.cache_url, socket_timeout=1.0, connect_timeout=2.0)
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
        """Write the items of cached kinds (one pipeline); returns how many were written."""
        wanted = [i for i in items if i.kind in self.kinds]
        if not wanted:
            return 0
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
            now = time.monotonic()
            if now - self._warned_at > WARN_EVERY_S:
                self._warned_at = now
                log.warning("query cache write failed (replies are not affected): %s", exc)
            return 0
        self.writes += len(wanted)
        return len(wanted)

    def stats(self) -> dict[str, Any]:
        """What the heartbeat reports: kinds, ttl, this worker's writes and errors, and the
        producers' shared hits and misses (read at most every STATS_EVERY_S)."""
        now = time.monotonic()
        if now - self._stats_at > STATS_EVERY_S:
            self._stats_at = now
            try:
                raw = self.redis.hgetall(self.keys.cache_stats)
                counts = {_text(k): int(v) for k, v in raw.items()}
                hits, misses = counts.get("hits", 0), counts.get("misses", 0)
                total = hits + misses
                self._stats = {
                    "hits": hits,
                    "misses": misses,
                    "hit_ratio": round(hits / total, 4) if total else 0.0,
                }
            except (redis.exceptions.RedisError, ValueError):
                pass  # last known counts; writes count the errors that matter
        return {
            "kinds": list(self.kinds),
            "ttl_s": self.ttl_ms // 1000,
            "writes": self.writes,
            "errors": self.errors,
            **self._stats,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
