"""The worker's own cost per batch, warm: one lone question at a time, the loop driven by hand.

    .venv/bin/python benchmarks/batch_cost.py [--batches 1000] [--out FILE.json]

Exports the bundled all-MiniLM-L6-v2 to ONNX (a temporary folder, removed after), pushes one
question with a real ``EmbeddingClient``, then runs one turn of the real worker loop
(``Worker.serve_once``) on it, a thousand times. Each turn is split into the encode (the
encoder call: tokenize, ONNX Runtime, pool, normalize), the worker's Redis commands (each timed
around redis-py's ``execute_command``: the take and finish scripts, the background lane's take
every ``EMBED_BULK_EVERY`` batches) and the rest: the worker's Python (parse, admission, token
count, outcomes, pack, metrics). Prints the p50 of each, in ms, and the mean commands per turn.
No idle pauses: this is the steady cost a busy worker pays per batch, not a lone question's
wake-ups (``benchmarks/overhead.py`` measures those).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from embedq import EmbeddingClient
from embedq.tools.local import RedisServer, bundled_model_path
from embedq.tools.record import RECORD_QUERIES
from embedq.tools.timeline import Recorder
from embedq.worker.export import export
from embedq.worker.loop import Worker
from embedq.worker.onnx_encoder import OnnxEncoder
from embedq.worker.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUEUE = "batch-cost:requests"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    server = RedisServer()
    recorder = Recorder()
    with tempfile.TemporaryDirectory(prefix="embedq-batch-cost-") as folder:
        target = Path(folder) / "onnx"
        export(str(bundled_model_path()), target)
        encoder = OnnxEncoder(target, threads=2)
        settings = Settings(redis_url=server.url, queue=QUEUE, worker_id="batch-cost", model=str(target))
        client = server.client()
        recorder.watch("worker", client)
        worker = Worker(settings, encoder, client)
        worker.warm_up()
        worker.encoder.encode = recorder.wrap("worker", "encode", encoder.encode)
        producer = EmbeddingClient.from_url(server.url, queue=QUEUE, timeout=30.0, max_queue=None)
        turns: list[tuple[float, float, float, int]] = []
        try:
            for i in range(args.batches + 50):
                call = producer.call([f"{RECORD_QUERIES[i % len(RECORD_QUERIES)]} {i}"], "query")
                producer.send(call, limit=1)
                mark, started = len(recorder.events), time.perf_counter()
                if worker.serve_once(block=1.0) != 1:
                    raise SystemExit("the worker did not take the question")
                total = time.perf_counter() - started
                turn = recorder.events[mark:]
                encode = sum(end - start for _, what, start, end in turn if what == "encode")
                commands = [end - start for _, what, start, end in turn if what != "encode"]
                if i >= 50:  # after warm-up
                    turns.append((total, encode, sum(commands), len(commands)))
                producer.wait(call)
        finally:
            server.stop()

    def p50(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 3)

    result = {
        "batches": len(turns),
        "turn_p50_ms": p50([t[0] for t in turns]),
        "encode_p50_ms": p50([t[1] for t in turns]),
        "redis_p50_ms": p50([t[2] for t in turns]),
        "python_p50_ms": p50([t[0] - t[1] - t[2] for t in turns]),
        "own_cost_p50_ms": p50([t[0] - t[1] for t in turns]),
        "commands_per_batch": round(statistics.mean(t[3] for t in turns), 2),
    }
    print(
        f"{result['batches']} batches of one question, p50 ms: turn {result['turn_p50_ms']}, encode "
        f"{result['encode_p50_ms']}, the worker's own cost {result['own_cost_p50_ms']} (Redis "
        f"{result['redis_p50_ms']} over {result['commands_per_batch']} commands, Python "
        f"{result['python_p50_ms']})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
