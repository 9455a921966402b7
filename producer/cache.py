"""The producer's side of the query cache: answer repeated texts without the queue.

Workers write each vector they encode into the cache Redis (``EMBED_CACHE_URL``) under the
fingerprint of their model (``embedq.worker.cache``). A producer with a cache reads the live
workers' fingerprint from their heartbeats (at most every ``refresh_s``) and looks a call's
texts up in one round trip (an MGET); the misses go through the queue as always. While live
workers disagree on the fingerprint (a rolling upgrade) or none is alive, the cache is not
read: a new model never answers with old vectors.

Hits and misses are counted per client (``stats``): only producers see them, and the shared
cache Redis takes no counters from producers (one could fake the others' numbers). A failing
cache (down, blackholed, slow, refusing) costs a warning and one short timeout
(``embedq.connection.cache_options``); after a few in a row the breaker (``embedq.breaker``)
leaves it alone for a while, and a call's own timeout starts after its lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import defaults
from .breaker import Breaker
from .protocol import KINDS, CacheEntry, Heartbeat, Keys
from .workers import heartbeat_values, heartbeat_values_async

log = logging.getLogger("embedq.cache")

REFRESH_S = 2.0
"""How long a producer trusts the fingerprint it read from the heartbeats."""
WARN_EVERY_S = 30.0
"""A failing cache is logged at most this often."""
DEFAULT_KINDS = defaults.CACHE_KINDS
"""What is cached by default: the chatbot's questions, which repeat; documents mostly do not."""


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """The cached kinds, or ``ValueError`` for one that is not a kind."""
    out = tuple(dict.fromkeys(kinds))
    bad = [k for k in out if k not in KINDS]
    if bad:
        raise ValueError(f"cache kinds must be among {KINDS}, got {bad[0]!r}")
    return out


def agreed_model(beats: Iterable[bytes | None]) -> tuple[str, int] | None:
    """(fingerprint, dim) when every live worker reports the same non-empty fingerprint, else None."""
    seen: set[tuple[str, int]] = set()
    for raw in beats:
        if raw is None:
            continue
        try:
            beat = Heartbeat.unpack(raw)
        except ValueError:
            continue
        seen.add((beat.fingerprint, beat.dim))
    if len(seen) != 1:
        return None
    fingerprint, dim = seen.pop()
    return (fingerprint, dim) if fingerprint and dim > 0 else None


@dataclass
class Hits:
    """What a lookup found: vectors and token counts by index into the call's texts."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    fingerprint: str = ""
    """The model the cached vectors came from: the rest of the call must come from it too."""

    def __len__(self) -> int:
        return len(self.vectors)


class CacheLookup:
    """Reads the query cache for one client (sync or asyncio; the client does the I/O)."""

    def __init__(
        self, client: Any, keys: Keys, *, kinds: Sequence[str] = DEFAULT_KINDS, refresh_s: float = REFRESH_S
    ) -> None:
        if isinstance(client, str) or not hasattr(client, "mget"):
            raise TypeError(f"cache must be a redis-py client, got {type(client).__name__}")
        self.redis = client
        self.keys = keys
        self.kinds = check_kinds(kinds)
        self.refresh_s = refresh_s
        self.model: tuple[str, int] | None = None
        self.read_at = -1e9
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.skipped = 0
        """Lookups not tried while the breaker was open (a failing cache left alone)."""
        self.breaker = Breaker()
        self._warned_at = -1e9

    def stale(self) -> bool:
        """True when the fingerprint should be read again from the heartbeats."""
        return time.monotonic() - self.read_at > self.refresh_s

    def learn(self, beats: Iterable[bytes | None]) -> None:
        """Take the fingerprint from freshly read heartbeats."""
        self.model = agreed_model(beats)
        self.read_at = time.monotonic()

    def plan(
        self, kind: str, texts: Sequence[str], fingerprint: str | None = None
    ) -> tuple[list[str], list[int]] | None:
        """Entry keys for looking ``texts`` up (each distinct text once) and the indexes they
        stand for; None when the cache does not apply (kind not cached, no agreed model, or the
        call is pinned to another ``fingerprint`` than the live workers')."""
        if kind not in self.kinds or self.model is None or not texts:
            return None
        if fingerprint is not None and fingerprint != self.model[0]:
            return None
        fingerprint = self.model[0]
        unique: dict[str, int] = {}
        for i, text in enumerate(texts):
            unique.setdefault(text, i)
        keys = [self.keys.cache_entry(fingerprint, kind, t) for t in unique]
        return keys, list(unique.values())

    def found(self, texts: Sequence[str], firsts: list[int], values: Sequence[bytes | None]) -> Hits:
        """The hits among ``values`` (answers for the texts at ``firsts``), spread to duplicates."""
        assert self.model is not None
        dim = self.model[1]
        by_text: dict[str, CacheEntry] = {}
        for i, raw in zip(firsts, values, strict=True):
            if raw is None:
                continue
            try:
                by_text[texts[i]] = CacheEntry.unpack(raw, dim)
            except ValueError as exc:
                self.failed(exc)
        hits = Hits(fingerprint=self.model[0])
        for i, text in enumerate(texts):
            entry = by_text.get(text)
            if entry is not None:
                hits.vectors[i] = entry.vector
                hits.tokens[i] = entry.tokens
        self.hits += len(hits)
        self.misses += len(texts) - len(hits)
        return hits

    def usable(self) -> bool:
        """False while the breaker is open: the call goes straight to the queue."""
        if self.breaker.closed():
            return True
        self.skipped += 1
        return False

    def failed(self, exc: Exception) -> None:
        """A lookup that failed: counted, logged now and then, never raised; enough in a row
        open the breaker."""
        self.errors += 1
        self.breaker.failure()
        now = time.monotonic()
        if now - self._warned_at > WARN_EVERY_S:
            self._warned_at = now
            log.warning("query cache unusable, going through the queue: %s", exc)

    def lookup(
        self, kind: str, texts: Sequence[str], queue_redis: Any, fingerprint: str | None = None
    ) -> Hits:
        """Cached vectors for ``texts`` (sync clients), of the pinned ``fingerprint`` if any."""
        if not self.usable():
            return Hits()
        try:
            if self.stale():
                self.learn(heartbeat_values(queue_redis, self.keys)[1])
            planned = self.plan(kind, texts, fingerprint)
            if planned is None:
                return Hits()
            keys, firsts = planned
            values = self.redis.mget(keys)
        except Exception as exc:
            self.failed(exc)
            return Hits()
        self.breaker.success()
        return self.found(texts, firsts, values)

    async def alookup(
        self, kind: str, texts: Sequence[str], queue_redis: Any, fingerprint: str | None = None
    ) -> Hits:
        """Cached vectors for ``texts`` (asyncio clients), of the pinned ``fingerprint`` if any."""
        if not self.usable():
            return Hits()
        try:
            if self.stale():
                self.learn((await heartbeat_values_async(queue_redis, self.keys))[1])
            planned = self.plan(kind, texts, fingerprint)
            if planned is None:
                return Hits()
            keys, firsts = planned
            values = await self.redis.mget(keys)
        except Exception as exc:
            self.failed(exc)
            return Hits()
        self.breaker.success()
        return self.found(texts, firsts, values)

    def stats(self) -> dict[str, float]:
        """This client's hits, misses, hit ratio and failed lookups."""
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / total, 4) if total else 0.0,
            "errors": self.errors,
            "skipped": self.skipped,
        }
