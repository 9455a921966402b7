"""Worker heartbeats: how the reaper, ``health`` and operators tell a live worker from a dead one.

Each worker registers its id in the ``<ns>:workers`` set and keeps ``<ns>:heartbeat:<id>``
alive with a short expiry, rewritten by its loop, so a stuck loop stops beating as surely as
a dead process. The heartbeat's value describes the worker (model, settings, counters).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import redis

from embedq.protocol import Keys


class Presence:
    """Writes one worker's heartbeat, at most once per ``interval`` seconds."""

    def __init__(self, client: redis.Redis, keys: Keys, worker_id: str, *, ttl: float) -> None:
        self.redis = client
        self.keys = keys
        self.worker_id = worker_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self.interval = min(1.0, ttl / 3)
        self.started = time.time()
        self._last = 0.0

    def due(self) -> bool:
        """True when the heartbeat should be written again."""
        return time.monotonic() - self._last >= self.interval

    def beat(self, info: Mapping[str, Any]) -> None:
        """Write the heartbeat now (with ``info``) and register the worker."""
        body = {
            **info,
            "worker": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "beat": time.time(),
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(self.worker_id), msgpack.packb(body, use_bin_type=True), px=self.ttl_ms)
        pipe.sadd(self.keys.workers, self.worker_id)
        pipe.execute()
        self._last = time.monotonic()

    def leave(self) -> None:
        """Deregister on a clean exit: nothing is left for a reaper to do."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.heartbeat(self.worker_id))
        pipe.srem(self.keys.workers, self.worker_id)
        pipe.execute()


def live_workers(client: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """Every registered worker whose heartbeat is fresh, with what it reported."""
    ids = sorted(m.decode() if isinstance(m, bytes) else m for m in client.smembers(keys.workers))
    if not ids:
        return {}
    values = client.mget([keys.heartbeat(i) for i in ids])
    return {i: msgpack.unpackb(v, raw=False) for i, v in zip(ids, values, strict=True) if v is not None}


def dead_workers(client: redis.Redis, keys: Keys) -> list[str]:
    """Registered workers whose heartbeat has expired."""
    ids = sorted(m.decode() if isinstance(m, bytes) else m for m in client.smembers(keys.workers))
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.exists(keys.heartbeat(i))
    return [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
