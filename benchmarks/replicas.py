"""Replicas x threads on one machine: 1 worker with 2 torch threads vs 2 workers with 1 each.

    .venv/bin/python benchmarks/replicas.py [--requests 600] [--rounds 2] [--concurrency 10]

Starts its own redis-server and the workers of each layout (bundled all-MiniLM-L6-v2), and runs
``--concurrency`` producers sending one short question each, back to back, through the queue.
Layouts alternate round by round on the same warm machine; throughput is the steady middle of
each run. Writes benchmarks/results/replicas.md and replicas.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedq import EmbeddingClient
from embedq.tools.bench import LONG_TEXT, SHORT_TEXTS, Cell, Load, Texts, machine_facts, measure_queue
from embedq.tools.local import RedisServer, WorkerProcess

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS = {"1 worker x 2 threads": (1, 2), "2 workers x 1 thread": (2, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600, help="requests per layout per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    server = RedisServer()
    texts = Texts(SHORT_TEXTS, [LONG_TEXT])
    cells: dict[str, Cell] = {}
    try:
        for n in range(args.rounds):
            for name, (replicas, threads) in LAYOUTS.items():
                queue = f"bench-replicas-{replicas}x{threads}:requests"
                workers = [
                    WorkerProcess(
                        server.url, queue, {"EMBED_THREADS": str(threads), "EMBED_WORKER_ID": f"w{i}-{queue}"}
                    )
                    for i in range(replicas)
                ]
                client = EmbeddingClient.from_url(server.url, queue=queue, timeout=120)
                try:
                    load = Load("short", 1, args.concurrency, args.requests)
                    cell = measure_queue(client, texts, load, threads=threads, policy="adaptive")
                finally:
                    for w in workers:
                        w.terminate()
                if name in cells:
                    cells[name].latencies_ms += cell.latencies_ms
                    cells[name].steady += cell.steady
                    cells[name].elapsed_s += cell.elapsed_s
                else:
                    cells[name] = cell
                s = cell.summary()
                print(
                    f"round {n + 1} {name}: {s['texts_per_s']:.1f} texts/s, p50 {s['p50_ms']:.1f} ms, "
                    f"p95 {s['p95_ms']:.1f} ms",
                    flush=True,
                )
    finally:
        server.stop()
    result: dict[str, Any] = {
        "machine": machine_facts(),
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "layouts": {name: cell.summary() for name, cell in cells.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "replicas.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Replicas x threads",
        "",
        f"`benchmarks/replicas.py` on {m['cpu']} ({m['cores']} cores), all-MiniLM-L6-v2, "
        f"{r['concurrency']} producers sending one short question each, back to back; "
        f"{r['rounds']} alternating rounds.",
        "",
        "| layout | requests | texts/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in r["layouts"].items():
        lines.append(
            f"| {name} | {s['requests']} | {s['texts_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
