"""``embedq bench``'s run: the sweep, then the targets measured in interleaved rounds."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from embedq import EmbeddingClient

from ..local import RedisServer, WorkerProcess
from ..reference import ReferenceModel
from .measure import Cell, Load, measure_inproc, measure_overhead, measure_queue
from .plan import (
    LONG_TEXT,
    SHORT_TEXTS,
    Plan,
    RepeatingTexts,
    Texts,
    TextSource,
    Variant,
    make_export,
    variants,
)
from .report import fmt


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on."""
    import sentence_transformers
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import redis

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "redis_py": redis.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run(plan: Plan, model: str, texts: Texts, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the sweep and the targets; returns everything as plain data."""
    plan.check()
    server = RedisServer()
    cache = RedisServer() if plan.cache_hit_ratio > 0 else None
    if cache is not None:
        admin = cache.client()
        admin.config_set("maxmemory", "256mb")
        admin.config_set("maxmemory-policy", "allkeys-lru")
    export_dir = plan.export
    made_export = export_dir is None and any(b != "torch" for b in plan.backends)
    if made_export:
        export_dir = make_export(model, log)
    cells: list[Cell] = []
    result: dict[str, Any] = {"model": model, "machine": machine_facts(), "plan": asdict(plan)}
    try:
        enc = ReferenceModel(model)
        for threads in plan.threads:
            enc.set_threads(threads)
            for length in plan.lengths:
                for batch in plan.batches:
                    for conc in [1, *(c for c in plan.concurrency if c > 1)]:
                        load = Load(length, batch, conc, plan.requests, plan.max_seconds)
                        cells.append(measure_inproc(enc, texts, load, "inproc" if conc == 1 else "naive"))
                        log(fmt(cells[-1]))
            worker = WorkerProcess(
                server.url,
                f"bench-t{threads}:requests",
                {"EMBED_THREADS": str(threads), "EMBEDDING_MODEL": model},
            )
            try:
                client = EmbeddingClient.from_url(server.url, queue=worker.queue, timeout=120, max_queue=None)
                for length in plan.lengths:
                    for conc in plan.concurrency:
                        load = Load(length, 1, conc, plan.requests, plan.max_seconds)
                        cells.append(measure_queue(client, texts, load, threads=threads, policy="adaptive"))
                        log(fmt(cells[-1]))
            finally:
                worker.terminate()
        result["sweep"] = [c.summary() for c in cells]
        chosen = variants(plan, model, export_dir, cache.url if cache else None)
        result["targets"] = measure_targets(plan, enc, server, model, texts, chosen, log)
    finally:
        server.stop()
        if cache is not None:
            cache.stop()
        if made_export and export_dir is not None:  # a temporary export of the model: ~90 MB for MiniLM
            shutil.rmtree(Path(export_dir).parent, ignore_errors=True)
    return result


LONE = Load("short", 1, 1, 1)
"""One short question at a time: the idle latency."""
ROUNDS = 8
OMP_QUIET_S = 0.25
"""Pause before timing a variant's requests: after an encode, torch's OpenMP threads (in this
process, or in a torch worker) keep spinning on both cores for KMP_BLOCKTIME (200 ms), and would
slow whatever is timed next (seen: a cache hit at 5.4 ms instead of 0.3 ms right after one)."""
"""Target cells are measured in this many interleaved rounds, so slow drifts of a noisy machine
hit every mode alike."""


def measure_targets(
    plan: Plan,
    enc: ReferenceModel,
    server: RedisServer,
    model: str,
    texts: Texts,
    chosen: dict[str, Variant],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The targets at 2 threads with short texts, ``target_requests`` per cell, every variant
    (policy, backend, cache) interleaved round by round: each round times a block of in-process
    batch-1 encodes, then a block of lone requests per variant, all with the same 5 ms gaps. The
    cache variant's texts repeat at ``cache_hit_ratio``; its all-hits idle cell is the cached
    query's latency."""
    n = plan.target_requests
    per_round = max(1, n // ROUNDS)
    enc.set_threads(2)
    workers = {name: WorkerProcess(server.url, f"bench-{name}:requests", v.env) for name, v in chosen.items()}
    try:
        clients = {}
        feeds: dict[str, TextSource] = {}
        for name, v in chosen.items():
            cache_url = v.env.get("EMBED_CACHE_URL") if v.cache else None
            clients[name] = EmbeddingClient.from_url(
                server.url, queue=workers[name].queue, timeout=120, max_queue=None, cache_url=cache_url
            )
            feeds[name] = RepeatingTexts(texts, plan.cache_hit_ratio, SHORT_TEXTS) if v.cache else texts
            if v.cache:  # the repeated questions were asked before: their vectors are cached
                for text in SHORT_TEXTS:
                    clients[name].embed([text])
                time.sleep(0.2)
        repeats = Texts(SHORT_TEXTS, [LONG_TEXT])
        hits_only = RepeatingTexts(repeats, 1.0, SHORT_TEXTS)
        cells: dict[str, Cell] = {}

        def add(key: str, cell: Cell) -> None:
            if key not in cells:
                cells[key] = cell
            else:
                cells[key].latencies_ms += cell.latencies_ms
                cells[key].elapsed_s += cell.elapsed_s
                cells[key].steady += cell.steady

        for _ in range(ROUNDS):
            add("inproc_bs8", measure_inproc(enc, texts, Load("short", 8, 1, per_round), "inproc"))
            add("naive_c10", measure_inproc(enc, texts, Load("short", 1, 10, per_round), "naive"))
            for name, client in clients.items():
                time.sleep(OMP_QUIET_S)  # after the last encode, in this process or a torch worker
                feed = feeds[name]
                ten = Load("short", 1, 10, per_round)
                add(f"{name}_c10", measure_queue(client, feed, ten, threads=2, policy=name))
            for _ in range(per_round):  # idle: a block in-process, then a block per variant
                add("inproc_bs1", measure_inproc(enc, texts, LONE, "inproc"))
                time.sleep(0.005)
            for name, client in clients.items():
                time.sleep(OMP_QUIET_S)
                for _ in range(per_round):
                    add(
                        f"{name}_idle",
                        measure_queue(client, feeds[name], LONE, threads=2, policy=name, pause_s=0.005),
                    )
                if chosen[name].cache:  # hits at idle: after the worker's last encode has settled
                    time.sleep(OMP_QUIET_S)
                    for _ in range(per_round):
                        add(
                            f"{name}_hit",
                            measure_queue(client, hits_only, LONE, threads=2, policy=name, pause_s=0.005),
                        )
        cache_stats = {name: c.cache.stats() for name, c in clients.items() if c.cache is not None}
    finally:
        for w in workers.values():
            w.terminate()
    base_bs1, base_bs8, naive10 = (cells[k].summary() for k in ("inproc_bs1", "inproc_bs8", "naive_c10"))
    log(
        f"targets baseline: inproc bs1 p50 {base_bs1['p50_ms']:.1f} ms, "
        f"bs8 {base_bs8['texts_per_s']:.0f} texts/s, naive c10 p95 {naive10['p95_ms']:.1f} ms"
    )
    results = {}
    for name, v in chosen.items():
        idle, loaded = cells[f"{name}_idle"].summary(), cells[f"{name}_c10"].summary()
        results[name] = {
            "backend": v.backend,
            "policy": v.policy,
            "cache_hit_ratio": plan.cache_hit_ratio if v.cache else 0.0,
            "idle": idle,
            "c10": loaded,
            "t1_throughput_ratio": loaded["texts_per_s"] / base_bs8["texts_per_s"],
            "t2_p95_ratio": loaded["p95_ms"] / naive10["p95_ms"],
            "t3_idle_extra_ms": idle["p50_ms"] - base_bs1["p50_ms"],
            "idle_ratio": idle["p50_ms"] / base_bs1["p50_ms"],
        }
        if v.cache:
            results[name]["cache_hit_idle"] = cells[f"{name}_hit"].summary()
            results[name]["cache_stats"] = cache_stats.get(name)
        r = results[name]
        log(
            f"{name}: throughput {r['t1_throughput_ratio']:.2f}x in-process batch-8, "
            f"p95 {r['t2_p95_ratio']:.2f}x naive, idle p50 "
            f"{r['idle_ratio']:.2f}x in-process batch-1 ({r['t3_idle_extra_ms']:+.1f} ms)"
            + (f", cached query p50 {r['cache_hit_idle']['p50_ms']:.2f} ms" if v.cache else "")
        )
    overhead = measure_overhead(server, model, plan.overhead_batches)
    log(f"per-batch overhead (batch of 8, excluding encode): p50 {overhead['p50_ms']:.2f} ms")
    return {
        "inproc_bs1": base_bs1,
        "inproc_bs8": base_bs8,
        "naive_c10": naive10,
        "policies": results,
        "overhead": overhead,
        "rounds": ROUNDS,
    }
