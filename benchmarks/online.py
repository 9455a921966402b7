"""Online path vs the same model in-process, side by side in one run (ratios, not absolutes).

    .venv/bin/python benchmarks/online.py [--requests 800] [--producers 10]
        [--configs adaptive/50/2,fixed/50,fixed/0]

Starts its own redis-server and one worker per batching config (policy/batch_wait_ms[/gap_ms]),
with the bundled all-MiniLM-L6-v2 (offline). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from producer import EmbeddingClient
from tests.support.servers import RedisServer, WorkerProcess, bundled_model_path

QUERIES = [
    "연남 카페 추천해줘",
    "강남역 맛집 어디야?",
    "비건 베이커리 있나요?",
    "여의도 회식 장소 추천",
    "파스타 맛있는 데 알려줘",
]


def text(p: int, i: int) -> str:
    """The text producer ``p`` sends as its ``i``-th request; the in-process baseline uses the same."""
    return f"{QUERIES[(p + i) % 5]} {p}-{i}"


def pct(values: list[float], p: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p / 100))]


def in_process(requests: int) -> dict[str, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(bundled_model_path(), device="cpu")
    for _ in range(5):
        model.encode(QUERIES, normalize_embeddings=True)
    lat = []
    for i in range(200):
        t = time.perf_counter()
        model.encode([QUERIES[i % 5]], normalize_embeddings=True)
        lat.append((time.perf_counter() - t) * 1000)
    batches = max(1, requests // 8)
    t = time.perf_counter()
    for i in range(batches):
        model.encode([text(j, i) for j in range(8)], normalize_embeddings=True)
    elapsed = time.perf_counter() - t
    return {"bs1_p50_ms": pct(lat, 50), "bs8_texts_per_s": batches * 8 / elapsed}


def through_queue(url: str, queue: str, requests: int, producers: int) -> dict[str, float]:
    client = EmbeddingClient.from_url(url, queue=queue, timeout=30)
    for _ in range(5):
        client.embed_query("warm")
    idle = []
    for i in range(200):
        t = time.perf_counter()
        client.embed_query(QUERIES[i % 5])
        idle.append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)

    each = requests // producers

    def producer(p: int) -> list[float]:
        out = []
        for i in range(each):
            t = time.perf_counter()
            client.embed_query(text(p, i))
            out.append((time.perf_counter() - t) * 1000)
        return out

    t = time.perf_counter()
    with ThreadPoolExecutor(producers) as pool:
        lat = [x for xs in pool.map(producer, range(producers)) for x in xs]
    elapsed = time.perf_counter() - t
    client.close()
    return {
        "idle_p50_ms": pct(idle, 50),
        "conc_texts_per_s": len(lat) / elapsed,
        "conc_p50_ms": pct(lat, 50),
        "conc_p95_ms": pct(lat, 95),
        "mean_ms": statistics.fmean(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--producers", type=int, default=10)
    parser.add_argument(
        "--configs",
        default="adaptive/50/2,fixed/50,fixed/0",
        help="batching configs to run, comma-separated: policy/batch_wait_ms[/batch_gap_ms]",
    )
    args = parser.parse_args()

    server = RedisServer()
    try:
        base = in_process(args.requests)
        print(
            f"in-process: batch-1 p50 {base['bs1_p50_ms']:.1f} ms, "
            f"batch-8 {base['bs8_texts_per_s']:.0f} texts/s"
        )
        print()
        print(
            f"| policy/wait/gap | idle p50 (ms) | vs in-process bs1 | {args.producers} producers: texts/s "
            "| vs in-process bs8 | p50 (ms) | p95 (ms) |"
        )
        print("|---|---|---|---|---|---|---|")
        for n, config in enumerate(args.configs.split(",")):
            policy, wait, *gap = config.split("/")
            queue = f"bench-{n}:requests"
            env = {"EMBED_BATCH_POLICY": policy, "EMBED_BATCH_WAIT_MS": wait}
            if gap:
                env["EMBED_BATCH_GAP_MS"] = gap[0]
            worker = WorkerProcess(server.url, queue, env)
            try:
                q = through_queue(server.url, queue, args.requests, args.producers)
            finally:
                worker.terminate()
            print(
                f"| {config} | {q['idle_p50_ms']:.1f} | {q['idle_p50_ms'] - base['bs1_p50_ms']:+.1f} ms "
                f"| {q['conc_texts_per_s']:.0f} | {q['conc_texts_per_s'] / base['bs8_texts_per_s']:.2f}x "
                f"| {q['conc_p50_ms']:.1f} | {q['conc_p95_ms']:.1f} |",
                flush=True,
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
