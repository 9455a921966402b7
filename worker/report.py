"""What a worker tells operators about itself: the start-up line, the heartbeat's content and
the labels of ``embedq_worker_info``, all from its settings and its encoder."""

from __future__ import annotations

import re
from typing import Any

from embedq.protocol import Heartbeat

from .cache import CacheWriter
from .encoder import Encoder
from .settings import Settings

BATCH_LOG = "batch %d (%s): %d request(s), %d text(s); waited %.1f ms, encode %.1f ms, reply %.1f ms"
"""The worker's DEBUG line per batch (number, lane, requests, texts, gathering wait, encode, reply)."""
BATCH_LOG_LINE = re.compile(
    r"batch \d+ \((?P<lane>\w+)\): \d+ request\(s\), (?P<texts>\d+) text\(s\); waited [\d.]+ ms, "
    r"encode (?P<encode>[\d.]+) ms, reply (?P<reply>[\d.]+) ms"
)
"""``BATCH_LOG`` read back (``embedq plan --batch-log``: a running fleet's own batch times)."""


def logged_batches(text: str, lane: str = "online") -> list[tuple[int, float]]:
    """(texts, encode + reply ms) of every ``lane`` batch in worker log ``text``."""
    return [
        (int(m["texts"]), float(m["encode"]) + float(m["reply"]))
        for m in BATCH_LOG_LINE.finditer(text)
        if m["lane"] == lane and int(m["texts"]) > 0
    ]


INFO_METRIC_FIELDS = (
    "model", "served_name", "fingerprint", "backend", "dim", "device", "threads", "max_batch",
    "bulk_max_batch",
    "batch_policy", "batch_wait_ms", "queue", "max_tokens", "truncate",
)  # fmt: skip
"""What ``embedq_worker_info`` reports of the heartbeat."""


def start_line(s: Settings, e: Encoder, cache: CacheWriter | None, served: str) -> str:
    """The start-up line: everything that decides what vectors and latency a user gets."""
    return (
        f"worker {s.worker_id} ready: model={e.name} served as {served!r} backend={e.backend} "
        f"dim={e.dim} max_tokens={e.max_tokens} "
        f"truncate={s.truncate} device={s.device} "
        f"threads={s.threads} max_batch={s.max_batch} bulk_max_batch={s.bulk_max_batch} "
        f"batch_policy={s.batch_policy} "
        f"batch_wait_ms={s.batch_wait_ms:g} batch_gap_ms={s.batch_gap_ms:g} "
        f"max_request_bytes={s.limits.byte_cap} "
        f"prefixes: query={e.prefixes['query']!r} passage={e.prefixes['passage']!r} "
        f"({e.prefix_source}) queue={s.queue!r} fingerprint={e.fingerprint or '-'} "
        f"cache={','.join(cache.kinds) + f' ttl={s.cache_ttl}s' if cache else 'off'}"
    )


def heartbeat(
    s: Settings,
    e: Encoder,
    *,
    served_name: str,
    batches: int,
    counts: dict[str, int],
    last_minute: dict[str, float],
    cache: dict[str, Any] | None,
    redis_trouble: dict[str, Any] | None,
) -> Heartbeat:
    """The heartbeat's content (the presence thread adds host, pid and times)."""
    return Heartbeat(
        worker=s.worker_id,
        model=e.name,
        backend=e.backend,
        dim=e.dim,
        prefixes=dict(e.prefixes),
        normalized=True,
        queue=s.queue,
        settings={
            "device": s.device,
            "threads": s.threads,
            "max_batch": s.max_batch,
            "bulk_max_batch": s.bulk_max_batch,
            "batch_policy": s.batch_policy,
            "batch_wait_ms": s.batch_wait_ms,
            "max_tokens": e.max_tokens,
            "truncate": s.truncate,
        },
        batches=batches,
        counts=counts,
        last_minute=last_minute,
        fingerprint=e.fingerprint,
        served_name=served_name,
        cache=cache,
        redis_trouble=redis_trouble,
    )


def info_labels(beat: Heartbeat) -> dict[str, object]:
    """The labels of ``embedq_worker_info``: the heartbeat's identity and settings, flat."""
    flat = {
        "model": beat.model,
        "served_name": beat.served_name,
        "fingerprint": beat.fingerprint,
        "backend": beat.backend,
        "dim": beat.dim,
        "queue": beat.queue,
        **beat.settings,
    }
    return {k: flat[k] for k in INFO_METRIC_FIELDS}
