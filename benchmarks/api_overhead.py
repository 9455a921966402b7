"""What the HTTP front door costs per request: ``embedq serve`` vs the Python client, interleaved.

    .venv/bin/python benchmarks/api_overhead.py [--rounds 5] [--requests 100]

One real worker (bundled all-MiniLM-L6-v2) and one ``embedq serve`` process; in each round a lone
query goes N times through the Python client, then N times through the openai SDK against the
server (base64, its default), one at a time. Prints the p50 of each and the difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from embedq import EmbeddingClient
from embedq.tools.local import RedisServer, WorkerProcess, bundled_model_path, free_port

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    ns = parser.parse_args()
    server = RedisServer()
    worker = WorkerProcess(server.url, "api-bench:requests", cwd=ROOT)
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "embedq.cli", "serve", "--port", str(port),
         "--redis-url", server.url, "--queue", worker.queue],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        client = EmbeddingClient.from_url(server.url, queue=worker.queue)
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
        model = bundled_model_path()
        direct: list[float] = []
        http: list[float] = []
        for r in range(ns.rounds):
            for i in range(ns.requests):
                text = f"연남 카페 추천해줘 {r} {i}"
                started = time.perf_counter()
                client.embed_query(text)
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                sdk.embeddings.create(model=model, input=text + " http")
                http.append(time.perf_counter() - started)
        p50_direct, p50_http = statistics.median(direct) * 1000, statistics.median(http) * 1000
        print(
            f"{len(direct)} lone queries each, interleaved: Python client p50 {p50_direct:.2f} ms, "
            f"openai SDK via embedq serve p50 {p50_http:.2f} ms: +{p50_http - p50_direct:.2f} ms per request"
        )
    finally:
        api.terminate()
        api.wait(10)
        worker.terminate()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
