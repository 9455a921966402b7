"""``embedq status``: what an operator looks at first, read from Redis alone."""

from __future__ import annotations

from typing import Any

import redis

from embedq.clock import time_reply_ms
from embedq.protocol import Keys

from .workers import dead_workers, eviction_warning, live_workers, read_policy


def collect(client: redis.Redis, queue: str) -> dict[str, Any]:
    """Queue depths, live and unreaped dead workers, last-minute traffic, dead letters."""
    keys = Keys(queue)
    live = live_workers(client, keys)
    dead = dead_workers(client, keys)
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.queue)
    pipe.llen(keys.bulk)
    pipe.llen(keys.dead)
    for worker_id in [*live, *dead]:
        for _, processing in keys.lanes(worker_id):
            pipe.llen(processing)
    queued, bulk, dead_letters, *held = pipe.execute()
    ids = [*live, *dead]
    holding = {w: held[2 * i] + held[2 * i + 1] for i, w in enumerate(ids)}
    now = time_reply_ms(client.time()) / 1000.0
    try:
        policy = read_policy(client)
    except redis.exceptions.ResponseError:  # a user without INFO: ask the workers
        policy = next((w.maxmemory_policy for w in live.values()), None)
    workers = []
    for worker_id, info in live.items():
        s = info.settings
        workers.append(
            {
                "id": worker_id,
                "model": info.model,
                "served_name": info.served_name or info.model,
                "backend": info.backend,
                "dim": info.dim,
                "device": s.get("device"),
                "threads": s.get("threads"),
                "max_batch": s.get("max_batch"),
                "bulk_max_batch": s.get("bulk_max_batch"),
                "batch_policy": s.get("batch_policy"),
                "batch_wait_ms": s.get("batch_wait_ms"),
                "holding": holding[worker_id],
                "beat_age_s": round(now - (info.beat_ms or now * 1000) / 1000.0, 1),
                "uptime_s": round(now - (info.started_ms or now * 1000) / 1000.0),
                "redis_trouble": info.redis_trouble,
                "batches": info.batches,
                "counts": info.counts,
                "last_minute": info.last_minute,
                "fingerprint": info.fingerprint,
                "cache": info.cache,
            }
        )
    models: dict[str, dict[str, Any]] = {}
    for w in workers:
        entry = models.setdefault(
            w["fingerprint"] or w["served_name"],
            {
                "served_name": w["served_name"],
                "fingerprint": w["fingerprint"],
                "dim": w["dim"],
                "workers": [],
            },
        )
        entry["workers"].append(w["id"])
    caching = [w["cache"] for w in workers if w["cache"]]
    cache = None
    if caching:  # the workers' own counts, summed (hits are seen by producers only)
        cache = {
            "kinds": caching[0].get("kinds", []),
            "ttl_s": caching[0].get("ttl_s"),
            **{k: sum(int(c.get(k, 0)) for c in caching) for k in ("writes", "errors", "dropped")},
        }
    warnings = [w for w in [eviction_warning(policy)] if w]
    if len(models) > 1:
        warnings.append(
            f"live workers on this queue serve {len(models)} different models: calls may be refused "
            "(clients never mix two models in one result) and producers skip the query cache. One "
            "queue serves one model: move the odd workers to a queue of their own"
        )
    window = max((w["last_minute"].get("window_s", 60.0) for w in workers), default=60.0)
    answered = sum(int(w["last_minute"].get("requests", 0)) for w in workers)
    return {
        "queue": queue,
        "depth": {"online": queued, "bulk": bulk, "in_progress": sum(holding.values())},
        "dead_letters": dead_letters,
        "maxmemory_policy": policy,
        "warnings": warnings,
        "cache": cache,
        "models": list(models.values()),
        "workers": workers,
        "dead_workers": [{"id": w, "holding": holding[w]} for w in dead],
        "last_minute": {
            "requests_per_s": round(answered / window, 2),
            "p95_ms": max((float(w["last_minute"].get("p95_ms", 0.0)) for w in workers), default=0.0),
        },
    }


def render(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    d, m = report["depth"], report["last_minute"]
    lines = [
        f"queue {report['queue']!r}: {d['online']} waiting, {d['bulk']} bulk waiting, "
        f"{d['in_progress']} being encoded; {report['dead_letters']} dead letter(s)",
        f"last minute: {m['requests_per_s']:.2f} requests/s, p95 {m['p95_ms']:.1f} ms in the worker "
        "(queue wait + encode; the slowest worker's)",
    ]
    for model in report.get("models", []):
        lines.append(
            f"model {model['served_name']!r}: dim {model['dim']}, fingerprint {model['fingerprint'] or '-'}, "
            f"{len(model['workers'])} live worker(s)"
        )
    cache = report.get("cache")
    if cache:
        lines.append(
            f"query cache ({','.join(cache.get('kinds', []))}, ttl {cache.get('ttl_s')}s): "
            f"{cache['writes']} vectors stored, {cache['errors']} failed writes, {cache['dropped']} "
            "dropped (hit ratios: each producer's own stats, embedq serve's /metrics)"
        )
    else:
        lines.append("query cache: off")
    lines.append(f"{len(report['workers'])} live worker(s):")
    for w in report["workers"]:
        c = w["counts"]
        lines.append(
            f"  {w['id']}: {w['model']} ({w['backend']}) dim={w['dim']} {w['device']} threads={w['threads']} "
            f"batch<={w['max_batch']} {w['batch_policy']}/{w['batch_wait_ms']}ms | holding {w['holding']}, "
            f"{w['batches']} batches, ok={c.get('ok', 0)} error={c.get('error', 0)} "
            f"expired={c.get('expired', 0)} dead={c.get('dead', 0)} bulk_texts={c.get('bulk_texts', 0)} | "
            f"{w['last_minute'].get('requests', 0)} req/min p95 {w['last_minute'].get('p95_ms', 0)} ms | "
            f"beat {w['beat_age_s']}s ago, up {w['uptime_s']}s | fingerprint {w['fingerprint'] or '-'}"
        )
    for w in report["workers"]:
        if w.get("redis_trouble"):
            t = w["redis_trouble"]
            lines.append(
                f"  {w['id']}: REDIS TROUBLE for {t.get('for_s')}s: {t.get('code')}: {t.get('message')}"
            )
    for w in report["dead_workers"]:
        lines.append(
            f"  {w['id']}: DEAD (heartbeat expired), holding {w['holding']}: the reaper will requeue"
        )
    lines.extend(f"WARNING: {w}" for w in report.get("warnings", []))
    return "\n".join(lines)
