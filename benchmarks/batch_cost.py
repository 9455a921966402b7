"""The worker's own cost per batch, warm: one question per batch, the loop driven by hand.

    .venv/bin/python benchmarks/batch_cost.py [--batches 1000] [--mode busy|lone] [--out FILE.json]

Exports the bundled all-MiniLM-L6-v2 to ONNX (a temporary folder, removed after; ``--export DIR``
serves an export made earlier), sends questions
with a real ``EmbeddingClient`` and runs the real worker loop (``Worker.serve_once``) by hand,
one batch per turn, a thousand times. ``--mode busy`` (the default): the next question is sent
while the worker encodes the current one, so one is always waiting when a batch ends (a worker
under load); ``--mode lone``: each question is sent after the worker finished the last one, and
before its next turn. Each turn is split into the model's work (tokenizing, which the worker
does once when it counts tokens at admission, and the encoder call: ONNX Runtime, pool,
normalize: the same work an in-process encode does), the worker's Redis commands (each timed
around redis-py's ``execute_command``) and the rest: the worker's Python (parse, admission,
outcomes, pack, metrics). Prints the p50 of each, in ms, and the mean commands per turn. No
idle pauses: this is the steady cost a busy worker pays per batch, not a lone question's
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
from embedq.call import Call
from embedq.tools.local import RedisServer, bundled_model_path
from embedq.tools.record import RECORD_QUERIES
from embedq.tools.timeline import MODEL_WORK, Recorder
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
    parser.add_argument("--mode", choices=("busy", "lone"), default="busy")
    parser.add_argument(
        "--export", type=Path, help="serve this export (embedq-worker export) instead of the bundled model's"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    server = RedisServer()
    recorder = Recorder()
    with tempfile.TemporaryDirectory(prefix="embedq-batch-cost-") as folder:
        target = args.export or Path(folder) / "onnx"
        if args.export is None:
            export(str(bundled_model_path()), target)
        encoder = OnnxEncoder(target, threads=2)
        settings = Settings(redis_url=server.url, queue=QUEUE, worker_id="batch-cost", model=str(target))
        client = server.client()
        recorder.watch("worker", client)
        worker = Worker(settings, encoder, client)
        worker.warm_up()
        producer = EmbeddingClient.from_url(server.url, queue=QUEUE, timeout=30.0, max_queue=None)
        total_turns = args.batches + 50
        calls: list[Call] = []
        sent = 0

        def send_next() -> None:
            nonlocal sent
            call = producer.call([f"{RECORD_QUERIES[sent % len(RECORD_QUERIES)]} {sent}"], "query")
            calls.append(call)
            producer.send(call, limit=1)
            sent += 1

        recorder.watch_encoder("worker", worker.encoder)
        encode = worker.encoder.encode
        queue_next = recorder.wrap("harness", "send", send_next)

        def encode_and_send(texts: list[str], kinds: list[str]) -> object:
            if args.mode == "busy" and sent < total_turns:
                queue_next()  # the next question arrives while this one is encoded
            return encode(texts, kinds)

        worker.encoder.encode = encode_and_send
        turns: list[tuple[float, float, float, int]] = []
        try:
            for i in range(total_turns):
                if sent <= i:
                    send_next()
                mark, started = len(recorder.events), time.perf_counter()
                if worker.serve_once(block=1.0) != 1:
                    raise SystemExit("the worker did not take the question")
                total = time.perf_counter() - started
                turn = recorder.events[mark:]
                model = sum(end - start for side, what, start, end in turn if what in MODEL_WORK)
                harness = sum(end - start for side, what, start, end in turn if side == "harness")
                worker_side = [e for e in turn if e[0] == "worker" and e[1] not in MODEL_WORK]
                commands = [end - start for _, _, start, end in worker_side]
                if i >= 50:  # after warm-up
                    turns.append((total - harness, model, sum(commands), len(commands)))
                producer.wait(calls[i])
        finally:
            server.stop()

    def p50(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 3)

    result = {
        "mode": args.mode,
        "batches": len(turns),
        "turn_p50_ms": p50([t[0] for t in turns]),
        "model_p50_ms": p50([t[1] for t in turns]),
        "redis_p50_ms": p50([t[2] for t in turns]),
        "python_p50_ms": p50([t[0] - t[1] - t[2] for t in turns]),
        "own_cost_p50_ms": p50([t[0] - t[1] for t in turns]),
        "commands_per_batch": round(statistics.mean(t[3] for t in turns), 2),
    }
    print(
        f"{result['batches']} batches of one question ({args.mode}), p50 ms: turn "
        f"{result['turn_p50_ms']}, model (tokenize + encode) {result['model_p50_ms']}, the worker's "
        f"own cost {result['own_cost_p50_ms']} (Redis {result['redis_p50_ms']} over "
        f"{result['commands_per_batch']} commands, Python {result['python_p50_ms']})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
