"""What each Redis topology costs the online path: standalone, TLS, a Sentinel-managed primary and
a 3-master Redis Cluster, side by side, interleaved.

    .venv/bin/python benchmarks/topologies.py [--rounds 3] [--lone 100] [--seconds 8] [--out DIR]

One real worker (bundled all-MiniLM-L6-v2) per topology, each on its own Redis. In each round,
for each topology in turn: ``--lone`` lone questions one at a time (their latencies), then 10
producer threads in one process for ``--seconds`` (questions per second). Prints the p50 and p95
of the lone questions and the throughput per topology; writes topologies.md/json to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from embedq import EmbeddingClient
from embedq.stats import percentile
from embedq.tools.local import RedisServer, WorkerProcess
from embedq.tools.record import RECORD_QUERIES
from embedq.tools.topologies import ClusterSet, SentinelSet, TlsServer

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUEUE = "{topo-bench}:requests"
"""Hash-tagged, so one queue name works on every topology, the cluster included."""


def lone(client: EmbeddingClient, n: int) -> list[float]:
    out = []
    for i in range(n):
        text = RECORD_QUERIES[i % len(RECORD_QUERIES)]
        started = time.perf_counter()
        client.embed([text])
        out.append((time.perf_counter() - started) * 1000)
    return out


def throughput(url: str, seconds: float, producers: int = 10) -> float:
    stop = threading.Event()
    counts = [0] * producers

    def run(k: int) -> None:
        client = EmbeddingClient.from_url(url, queue=QUEUE, timeout=30)
        i = 0
        while not stop.is_set():
            client.embed([RECORD_QUERIES[(k + i) % len(RECORD_QUERIES)]])
            counts[k] += 1
            i += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(producers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return sum(counts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lone", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=None, help="folder for topologies.md and .json")
    ns = parser.parse_args()
    standalone, tls, sentinel, cluster = RedisServer(), TlsServer(), SentinelSet(), ClusterSet(3)
    urls = {
        "standalone": standalone.url,
        "TLS": tls.url,
        "Sentinel": sentinel.url,
        "Cluster (3 masters)": cluster.url,
    }
    workers = {name: WorkerProcess(url, QUEUE, cwd=ROOT) for name, url in urls.items()}
    try:
        clients = {name: EmbeddingClient.from_url(url, queue=QUEUE) for name, url in urls.items()}
        for client in clients.values():
            lone(client, 10)  # warm
        lat: dict[str, list[float]] = {n: [] for n in urls}
        qps: dict[str, list[float]] = {n: [] for n in urls}
        for r in range(ns.rounds):
            for name in urls:
                lat[name] += lone(clients[name], ns.lone)
                qps[name].append(throughput(urls[name], ns.seconds))
            print(f"round {r + 1}/{ns.rounds}: " + ", ".join(f"{n} {qps[n][-1]:.0f}/s" for n in urls))
        results = {
            n: {
                "lone_p50_ms": round(percentile(sorted(lat[n]), 50), 2),
                "lone_p95_ms": round(percentile(sorted(lat[n]), 95), 2),
                "throughput_qps": round(sum(qps[n]) / len(qps[n]), 1),
            }
            for n in urls
        }
        base = results["standalone"]
        lines = [
            "| Redis | lone question p50 | p95 | 10 producers (threads), questions/s | vs standalone |",
            "|---|---:|---:|---:|---:|",
        ]
        for n, r in results.items():
            ratio = r["throughput_qps"] / base["throughput_qps"]
            lines.append(
                f"| {n} | {r['lone_p50_ms']:.1f} ms | {r['lone_p95_ms']:.1f} ms | "
                f"{r['throughput_qps']:.0f} | {ratio:.2f}x |"
            )
        table = "\n".join(lines)
        print(table)
        if ns.out:
            ns.out.mkdir(parents=True, exist_ok=True)
            (ns.out / "topologies.json").write_text(json.dumps(results, indent=2) + "\n")
            command = f"benchmarks/topologies.py --rounds {ns.rounds} --lone {ns.lone} --seconds {ns.seconds}"
            (ns.out / "topologies.md").write_text(
                f"# Redis topologies\n\n`{command}`, one worker (all-MiniLM-L6-v2) per topology, "
                f"interleaved.\n\n{table}\n"
            )
    finally:
        for w in workers.values():
            w.terminate()
        standalone.stop()
        tls.stop()
        sentinel.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
