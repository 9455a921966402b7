"""Who serves a queue, as its workers report it: live workers (fresh heartbeats, with what they
said), dead ones (registered, heartbeat expired), and whether Redis's eviction policy can lose
requests. Read by ``embedq status``, ``embedq-worker health``, the reaper, the API's health
check and the bulk job; the heartbeat itself is ``protocol.Heartbeat``, written by the worker.
"""

from __future__ import annotations

from typing import Any

import redis

from .protocol import Heartbeat, Keys

SAFE_POLICIES = ("noeviction",)


def eviction_warning(policy: str | None) -> str | None:
    """A warning for an eviction policy under which Redis may delete queued requests or replies."""
    if policy is None or policy in SAFE_POLICIES or policy == "unknown":
        return None
    return (
        f"Redis evicts keys under memory pressure (maxmemory-policy {policy}): queued requests and "
        "replies can vanish without a word. Set maxmemory-policy noeviction on the queue's Redis"
    )


def read_policy(client: redis.Redis) -> str | None:
    """Redis's ``maxmemory-policy`` (from INFO, which needs no CONFIG permission)."""
    info = client.info("memory")
    policy = info.get("maxmemory_policy")
    return str(policy) if policy is not None else None


def _sorted_ids(members: Any) -> list[str]:
    return sorted(m.decode() if isinstance(m, bytes) else m for m in members)


def _ids(client: Any, keys: Keys) -> list[str]:
    return _sorted_ids(client.smembers(keys.workers))


def heartbeat_values(client: Any, keys: Keys) -> tuple[list[str], list[Any]]:
    """Registered worker ids and their raw heartbeat values (None where expired): two round trips."""
    ids = _ids(client, keys)
    return ids, client.mget([keys.heartbeat(i) for i in ids]) if ids else []


async def heartbeat_values_async(client: Any, keys: Keys) -> tuple[list[str], list[Any]]:
    """``heartbeat_values`` for an asyncio client."""
    ids = _sorted_ids(await client.smembers(keys.workers))
    return ids, await client.mget([keys.heartbeat(i) for i in ids]) if ids else []


def live_workers(client: Any, keys: Keys) -> dict[str, Heartbeat]:
    """Every registered worker whose heartbeat is fresh, with what it reported (an unreadable
    heartbeat still counts as live: it exists and has not expired)."""
    return parse_heartbeats(*heartbeat_values(client, keys))


async def live_workers_async(client: Any, keys: Keys) -> dict[str, Heartbeat]:
    """``live_workers`` for an asyncio client."""
    return parse_heartbeats(*await heartbeat_values_async(client, keys))


def parse_heartbeats(ids: list[str], values: list[Any]) -> dict[str, Heartbeat]:
    """The live ones of ``ids`` (a value, not expired) with their heartbeats, read by MGET."""
    out = {}
    for worker_id, value in zip(ids, values, strict=True):
        if value is None:
            continue
        try:
            out[worker_id] = Heartbeat.unpack(value)
        except ValueError:
            out[worker_id] = Heartbeat(worker=worker_id, model="(unreadable heartbeat)")
    return out


def dead_workers(client: Any, keys: Keys) -> list[str]:
    """Registered workers whose heartbeat has expired."""
    ids = _ids(client, keys)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.exists(keys.heartbeat(i))
    return [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
