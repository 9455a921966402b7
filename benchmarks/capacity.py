"""Capacity planning validated: the fleet simulation (``embedq plan``) against real workers.

    .venv/bin/python benchmarks/capacity.py [--seconds 40] [--out benchmarks/results]

For each fleet this machine can hold without sharing cores (1 worker x 2 threads, 2 workers x 1
thread): measure the batch-time curve in-process at that thread count (questions, batches of
1, 2, 4, 8, interleaved), measure the queue's own cost (a lone question through the queue minus
in-process), then offer Poisson arrivals of one question each at 30%, 60% and 85% of the
curve's ceiling to real workers through Redis (open loop: a question's latency counts from its
scheduled arrival, so a slow fleet cannot slow the load down), and compare the measured p50 and
p95 with three predictions for the same fleet and rate:

- from the in-process curve, measured on an idle machine (what one has before deploying);
- from that curve scaled by the batch times the workers logged during the 30% run (DEBUG lines:
  texts and encode-plus-reply ms, each a factor against the curve, drawn per simulated batch):
  what one has from a fleet already running at light load, where the load generator's share of
  these 2 cores shows;
- from the batch times of the same run: the queueing model alone, given the service times it
  really had.

Writes capacity.md and capacity.json to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from embedq import EmbeddingClient
from embedq.stats import percentile
from embedq.tools.capacity import Curve, Fleet, simulate
from embedq.tools.corpus import find_korquad, korquad_pairs
from embedq.tools.local import RedisServer, WorkerProcess, bundled_model_path
from embedq.tools.record import RECORD_QUERIES
from embedq.tools.reference import ReferenceModel
from embedq.worker.report import logged_batches

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZES = (1, 2, 4, 8)
LOADS = (0.3, 0.6, 0.85)


def questions() -> list[str]:
    path = find_korquad()
    if path is None:
        return list(RECORD_QUERIES)
    return [q for q, _ in korquad_pairs(path)][:2000]


def measure_curve(model: ReferenceModel, texts: list[str], reps: int = 12) -> Curve:
    """Median encode ms of a batch of each size (interleaved, random questions)."""
    rng = random.Random(1)
    times: dict[int, list[float]] = {b: [] for b in SIZES}
    model.encode(texts[:8], "query: ")
    for _ in range(reps):
        for b in SIZES:
            batch = rng.sample(texts, b)
            started = time.perf_counter()
            model.encode(batch, "query: ")
            times[b].append((time.perf_counter() - started) * 1000)
    return Curve.of({b: statistics.median(v) for b, v in times.items()})


def open_loop(url: str, queue: str, rate: float, seconds: float, texts: list[str], seed: int) -> list[float]:
    """Latencies (ms, from each question's scheduled arrival) of Poisson arrivals at ``rate``."""
    rng = random.Random(seed)
    schedule, t = [], 0.0
    while t < seconds:
        t += rng.expovariate(rate)
        schedule.append(t)
    latencies: list[float] = []
    lock = threading.Lock()
    cursor = iter(range(len(schedule)))
    start = time.monotonic() + 0.5

    def producer() -> None:
        client = EmbeddingClient.from_url(url, queue=queue, timeout=30)
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            due = start + schedule[i]
            time.sleep(max(0.0, due - time.monotonic()))
            client.embed([texts[i % len(texts)]])
            with lock:
                latencies.append((time.monotonic() - due) * 1000)

    threads = [threading.Thread(target=producer) for _ in range(48)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies


def lone_overhead(url: str, queue: str, model: ReferenceModel, texts: list[str], n: int = 60) -> float:
    """p50 of a lone question through the queue minus in-process, ms (interleaved)."""
    client = EmbeddingClient.from_url(url, queue=queue)
    queued, local = [], []
    for i in range(n):
        text = texts[i]
        started = time.perf_counter()
        client.embed([text])
        queued.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        model.encode([text], "query: ")
        local.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    return max(0.0, statistics.median(queued) - statistics.median(local))


def fleet_batches(procs: list[WorkerProcess]) -> list[tuple[int, float]]:
    """(texts, encode + reply ms) of every online batch the workers logged so far."""
    return [b for p in procs for b in logged_batches(p.log())]


def run_fleet(workers: int, threads: int, seconds: float, texts: list[str]) -> dict[str, Any]:
    model = ReferenceModel(bundled_model_path(), threads=threads)
    curve = measure_curve(model, texts)
    server = RedisServer()
    queue = f"capacity-{workers}x{threads}:requests"
    env = {
        "EMBED_THREADS": str(threads),
        "EMBED_QUERY_PREFIX": "query: ",
        "EMBED_PASSAGE_PREFIX": "passage: ",
        "EMBED_LOG_LEVEL": "DEBUG",  # a line per batch: the fleet's own batch times
    }
    procs = [WorkerProcess(server.url, queue, env, cwd=ROOT) for _ in range(workers)]
    try:
        overhead = lone_overhead(server.url, queue, model, texts)
        fleet = Fleet(workers=workers, overhead_ms=overhead)
        ceiling = curve.capacity(fleet.max_batch) * workers
        rows = []
        light: Curve | None = None
        for load in LOADS:
            rate = load * ceiling
            before = len(fleet_batches(procs))
            measured = sorted(open_loop(server.url, queue, rate, seconds, texts, seed=int(load * 100)))
            same = curve.observed(fleet_batches(procs)[before:])
            light = light or same  # the lightest load's factors, then used for the heavier ones
            n = max(2000, len(measured) * 4)
            logged = Fleet(workers=workers, overhead_ms=overhead)
            predictions = {
                "idle": simulate(curve, fleet, rate, requests=n, seed=7),
                "light": simulate(light, logged, rate, requests=n, seed=7),
                "same": simulate(same, logged, rate, requests=n, seed=7),
            }
            row: dict[str, Any] = {
                "load": load,
                "rate": round(rate, 2),
                "questions": len(measured),
                "measured_p50_ms": round(percentile(measured, 50), 1),
                "measured_p95_ms": round(percentile(measured, 95), 1),
                "factor_p50": round(percentile(sorted(same.spread), 50), 2),
                "factor_p90": round(percentile(sorted(same.spread), 90), 2),
            }
            for name, sim in predictions.items():
                row[f"{name}_p50_ms"] = round(sim.p(50), 1)
                row[f"{name}_p95_ms"] = round(sim.p(95), 1)
                row[f"{name}_p95_error"] = round(sim.p(95) / row["measured_p95_ms"] - 1, 3)
            rows.append(row)
            print(f"{workers}x{threads}: {row}", flush=True)
        return {
            "workers": workers,
            "threads": threads,
            "curve_ms": {str(b): round(ms, 2) for b, ms in curve.points},
            "overhead_ms": round(overhead, 2),
            "ceiling_qps": round(ceiling, 2),
            "rows": rows,
        }
    finally:
        for p in procs:
            p.terminate()
        server.stop()


def report(results: list[dict[str, Any]], seconds: float) -> str:
    lines = [
        "# Capacity planning: simulated vs measured",
        "",
        f"`benchmarks/capacity.py --seconds {seconds:g}`: all-MiniLM-L6-v2, questions "
        "(KorQuAD dev, or the design record's), Poisson arrivals, open loop, on this 2-core machine. "
        "The simulation is `embedq plan`'s (`embedq.tools.capacity`): the workers' own batching code "
        "on simulated clocks, fed the curve and queue cost measured just before.",
        "",
        "| fleet | rate (load) | measured p50 / p95 | predicted p50 / p95 (p95 error): from the idle curve "
        "| from the 30% run's batch times | from this run's batch times "
        "| this run's batch times / idle curve (p50, p90) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in r["rows"]:
            cells = [
                f"{row[f'{k}_p50_ms']:.0f} / {row[f'{k}_p95_ms']:.0f} ms ({row[f'{k}_p95_error']:+.0%})"
                for k in ("idle", "light", "same")
            ]
            lines.append(
                f"| {r['workers']} x {r['threads']} threads | {row['rate']:.1f}/s ({row['load']:.0%}) | "
                f"{row['measured_p50_ms']:.0f} / {row['measured_p95_ms']:.0f} ms | {' | '.join(cells)} | "
                f"{row['factor_p50']:.2f}x, {row['factor_p90']:.2f}x |"
            )
    lines += [
        "",
        "| fleet | idle curve, ms at 1/2/4/8 texts | queue cost (lone question, queue - in-process) |",
        "|---|---|---:|",
    ]
    for r in results:
        idle = "/".join(f"{float(v):.0f}" for v in r["curve_ms"].values())
        lines.append(f"| {r['workers']} x {r['threads']} threads | {idle} | {r['overhead_ms']:.1f} ms |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds of load per rate")
    parser.add_argument("--out", type=Path, default=None, help="folder for capacity.md and capacity.json")
    ns = parser.parse_args()
    texts = questions()
    results = [run_fleet(1, 2, ns.seconds, texts), run_fleet(2, 1, ns.seconds, texts)]
    text = report(results, ns.seconds)
    print(text)
    if ns.out:
        ns.out.mkdir(parents=True, exist_ok=True)
        (ns.out / "capacity.json").write_text(json.dumps(results, indent=2) + "\n")
        (ns.out / "capacity.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
