"""Hardening figures: failover after kill -9, worker memory for huge requests, wasted encodes
under overload. Real redis-server and worker processes, the bundled all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/hardening.py failover [--kills 5]
    .venv/bin/python benchmarks/hardening.py memory [--sizes-mb 100,400]
    .venv/bin/python benchmarks/hardening.py overload [--tree PATH] [--producers 120] [--timeout 0.3]

``overload --tree`` runs the same scenario against another checkout (say the commit before this
work, in a ``git worktree``), so before and after are measured by one script, on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import redis

from embedq import EmbeddingClient
from embedq.protocol import Keys, new_request_id
from embedq.tools.local import RedisServer, WorkerProcess, bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAKE_SLOW = {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_DIM": "8"}


def failover(kills: int) -> dict[str, object]:
    """Two workers; a request is taken by one, which is killed with SIGKILL: time until the
    request is back in line (requeued by the other's reaper) and until it is answered."""
    server = RedisServer()
    queue = "failover:requests"
    keys = Keys(queue)
    admin = server.client()
    env = {**FAKE_SLOW, "EMBED_TEST_ENCODE_DELAY": "0.3"}
    workers = {
        n: WorkerProcess(server.url, queue, {**env, "EMBED_WORKER_ID": n}, cwd=ROOT) for n in ("a", "b")
    }
    client = EmbeddingClient.from_url(server.url, queue=queue, timeout=30)
    requeued, answered = [], []
    try:
        for k in range(kills):
            call = client.call([f"failover {k}"])
            client.send(call)
            holder = None
            while holder is None:
                holder = next((n for n in workers if admin.llen(keys.processing(n))), None)
                time.sleep(0.002)
            workers[holder].kill()
            killed = time.monotonic()
            while admin.llen(keys.processing(holder)):
                time.sleep(0.005)
            requeued.append(time.monotonic() - killed)
            client.wait(call)
            answered.append(time.monotonic() - killed)
            time.sleep(0.5)
            workers[holder] = WorkerProcess(server.url, queue, {**env, "EMBED_WORKER_ID": holder}, cwd=ROOT)
    finally:
        for w in workers.values():
            w.kill()
        server.stop()
    return {
        "kills": kills,
        "heartbeat_ttl_s": 2.0,
        "reap_interval_s": 0.5,
        "encode_s": 0.3,
        "requeued_s": {"p50": round(statistics.median(requeued), 2), "max": round(max(requeued), 2)},
        "answered_s": {"p50": round(statistics.median(answered), 2), "max": round(max(answered), 2)},
    }


def memory(sizes_mb: list[int]) -> dict[str, object]:
    """Peak RSS of a real worker before and after a request of each size (MB) is pushed."""
    server = RedisServer()
    queue = "memory:requests"
    keys = Keys(queue)
    admin = server.client()
    worker = WorkerProcess(server.url, queue, cwd=ROOT)
    rows = []
    try:
        for size in sizes_mb:
            before = worker.peak_rss_kib()
            rid, now = new_request_id(), int(time.time() * 1000)  # the local Redis's clock
            head = {"v": 2, "id": rid, "kind": "query", "deadline_ms": now + 120_000, "sent_ms": now}
            raw = msgpack.packb({**head, "texts": ["x" * (size * 1_000_000)]}, use_bin_type=True)
            admin.rpush(keys.queue, raw)
            admin.rpush(keys.wake, 1)
            del raw
            popped = admin.blpop([keys.reply(rid)], timeout=120)
            assert popped is not None, "no reply"
            code = msgpack.unpackb(popped[1], raw=False)["code"]
            rows.append(
                {
                    "request_mb": size,
                    "reply": code,
                    "peak_rss_before_mib": round(before / 1024, 1),
                    "peak_rss_after_mib": round(worker.peak_rss_kib() / 1024, 1),
                    "growth_mib": round((worker.peak_rss_kib() - before) / 1024, 1),
                }
            )
            admin.delete(keys.dead)
    finally:
        worker.terminate()
        server.stop()
    return {"requests": rows}


DRIVER = r"""
import json, sys, threading, time
import importlib
EmbeddingClient = importlib.import_module(sys.argv[6]).EmbeddingClient  # the tree's own client
url, queue = sys.argv[1], sys.argv[2]
producers, timeout, seconds = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
client = EmbeddingClient.from_url(url, queue=queue, timeout=timeout, max_queue=None)
stop = time.monotonic() + seconds
counts = {"ok": 0, "failed": 0}
lock = threading.Lock()
def loop(n):
    i = 0
    while time.monotonic() < stop:
        try:
            client.embed_query(f"producer {n} question {i} 연남 카페 추천해줘")
            key = "ok"
        except Exception:
            key = "failed"
        with lock:
            counts[key] += 1
        i += 1
threads = [threading.Thread(target=loop, args=(n,)) for n in range(producers)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts))
"""


def overload(tree: Path, producers: int, timeout: float, seconds: float) -> dict[str, object]:
    """Closed-loop producers (threads of one process) that outnumber what one worker serves
    within ``timeout``: how many encoded texts were for requests nobody got in time."""
    server = RedisServer()
    queue = "overload:requests"
    module = "embedq.worker" if (tree / "worker" / "lane.py").exists() else "worker"
    env = {**os.environ, "REDIS_URL": server.url, "EMBED_QUEUE": queue, "PYTHONUNBUFFERED": "1",
           "EMBEDDING_MODEL": bundled_model_path(), "EMBED_WORKER_ID": "overload",
           "PYTHONPATH": str(tree)}  # fmt: skip
    log = open(tree / ".overload-worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", module], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while " ready: " not in (tree / ".overload-worker.log").read_text():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tree / ".overload-worker.log").read_text())
            time.sleep(0.1)
        out = subprocess.run(
            [sys.executable, "-c", DRIVER, server.url, queue, str(producers), str(timeout), str(seconds),
             "embedq" if module == "embedq.worker" else "producer"],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        counts = json.loads(out.stdout.strip().splitlines()[-1])
        time.sleep(2.5)  # a last heartbeat with the final counters
        raw = redis.Redis.from_url(server.url).get(Keys(queue).heartbeat("overload"))
        worker_counts = msgpack.unpackb(raw, raw=False)["counts"]
    finally:
        worker.terminate()
        worker.wait(20)
        log.close()
        server.stop()
    encoded = int(worker_counts.get("texts", 0))
    wasted = max(0, encoded - counts["ok"])
    return {
        "tree": str(tree),
        "producers": producers,
        "timeout_s": timeout,
        "seconds": seconds,
        "answered_in_time": counts["ok"],
        "failed_calls": counts["failed"],
        "texts_encoded": encoded,
        "wasted_encodes": wasted,
        "wasted_share": round(wasted / encoded, 3) if encoded else 0.0,
        "worker_counts": worker_counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--kills", type=int, default=5)
    m = sub.add_parser("memory")
    m.add_argument("--sizes-mb", default="100,400")
    o = sub.add_parser("overload")
    o.add_argument("--tree", type=Path, default=ROOT)
    o.add_argument("--producers", type=int, default=120)
    o.add_argument("--timeout", type=float, default=0.3)
    o.add_argument("--seconds", type=float, default=20.0)
    ns = parser.parse_args()
    if ns.what == "failover":
        result = failover(ns.kills)
    elif ns.what == "memory":
        result = memory([int(x) for x in ns.sizes_mb.split(",")])
    else:
        result = overload(ns.tree.resolve(), ns.producers, ns.timeout, ns.seconds)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
