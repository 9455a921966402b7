"""Soak: many requests from many producers through one worker; nothing lost, nothing left, no leak.

    .venv/bin/python benchmarks/soak.py [--requests 20000] [--producers 50]

Starts its own redis-server and worker (bundled all-MiniLM-L6-v2). Checks every request is
answered with a vector, the Redis key count returns to its baseline, and the worker's resident
memory grows less than 10% after warm-up. Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedq import EmbeddingClient
from embedq.tools.local import RedisServer, WorkerProcess
from embedq.tools.record import RECORD_QUERIES as QUERIES


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--producers", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2_000)
    args = parser.parse_args()

    server = RedisServer()
    worker = WorkerProcess(server.url, "soak:requests")
    r = server.client()
    client = EmbeddingClient.from_url(server.url, queue="soak:requests", timeout=120)
    try:

        def run(total: int) -> tuple[int, float]:
            answered = 0
            lock = threading.Lock()

            def producer(p: int) -> None:
                nonlocal answered
                for i in range(p, total, args.producers):
                    vector = client.embed_query(f"{QUERIES[i % 5]} {i}")
                    assert len(vector) == 384
                    with lock:
                        answered += 1

            started = time.perf_counter()
            with ThreadPoolExecutor(args.producers) as pool:
                for f in [pool.submit(producer, p) for p in range(args.producers)]:
                    f.result()
            return answered, time.perf_counter() - started

        run(args.warmup)
        baseline_keys = r.dbsize()
        rss_before = rss_kib(worker.proc.pid)
        answered, elapsed = run(args.requests)
        keys_after = r.dbsize()
        rss_after = rss_kib(worker.proc.pid)
        growth = (rss_after - rss_before) / rss_before
        print(
            f"answered {answered}/{args.requests} in {elapsed:.1f}s ({answered / elapsed:.0f} req/s) "
            f"from {args.producers} producers"
        )
        print(
            f"redis keys: {baseline_keys} after warm-up, {keys_after} after the soak "
            f"({sorted(k.decode() for k in r.scan_iter())})"
        )
        print(
            f"worker RSS: {rss_before / 1024:.1f} MiB after warm-up, {rss_after / 1024:.1f} MiB after "
            f"({growth:+.1%})"
        )
        ok = answered == args.requests and keys_after == baseline_keys and growth < 0.10
        print("soak: OK" if ok else "soak: FAILED")
        return 0 if ok else 1
    finally:
        worker.terminate()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
