"""Where a lone question's time goes: the queue's own cost, stage by stage, against the encode.

    .venv/bin/python benchmarks/overhead.py [--questions 300] [--idle-ms 20] [--out DIR]

Exports the bundled all-MiniLM-L6-v2 to ONNX (a temporary folder, removed after; ``--export DIR``
serves an export made earlier, e.g. of an e5-large-shaped model), then runs a
real Redis, the real worker loop (``Worker.serve_once``, ONNX Runtime, 2 threads) in a process of
its own, and a real ``EmbeddingClient`` in this one. Every Redis command of both sides and every
encode is timestamped on ``time.perf_counter`` (CLOCK_MONOTONIC: one clock for every process of
the machine), and each lone question is cut into stages:

    producer          the call's start -> its enqueue script is sent (build, pack)
    enqueue + take    -> the worker's take script returned (the enqueue script ran, the worker's
                         blocking pop woke on its token, the take script ran)
    admit             -> the encode starts (gathering, parse, model check, deadline), less the
                         tokenizing
    model             the tokenizing (done once, when the worker counts a request's tokens) and
                      the encoder call (ONNX Runtime, pool, normalize): an in-process encode
                      does the same work
    reply             -> the worker sends its finish script (outcomes, pack)
    finish + producer wake
                      -> the call returned (the script ran, the producer's blocking pop woke,
                         unpack, checks)

Interleaved with each queued question, the same encode in-process (``encoder.encode``, batch 1,
after the same idle pause), and the floor: the same five Redis events of a size-checked queue
(an enqueue script with a wake token, a blocking pop on the token, a take script, a finish script
writing the reply, the producer's blocking pop) between a bare redis-py producer and a bare
worker process that does nothing else. Prints p50 per stage, the lone-question cost against
in-process and the floor; writes overhead.md/json to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from embedq import EmbeddingClient
from embedq.stats import percentile
from embedq.tools.local import RedisServer, bundled_model_path
from embedq.tools.record import RECORD_QUERIES
from embedq.tools.timeline import MODEL_WORK, Event, Recorder
from embedq.worker.export import export
from embedq.worker.loop import Worker
from embedq.worker.onnx_encoder import OnnxEncoder
from embedq.worker.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUEUE = "overhead:requests"
STAGES = ("producer", "enqueue + take", "admit", "model", "reply", "finish + producer wake")
BARE_QUEUE = "bare"
BARE_ENQUEUE = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], -64, -1)
return n
"""
BARE_TAKE = """
local t = redis.call('TIME')
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {t[1], t[2]}
if #items == 0 then return out end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('RPUSH', KEYS[2], unpack(items))
for _, v in ipairs(items) do table.insert(out, v) end
return out
"""
BARE_FINISH = """
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], 60)
redis.call('LREM', KEYS[1], 1, ARGV[2])
return 1
"""
"""The floor's scripts: what any queue that checks a request before taking it, keeps it in a
processing list until answered and answers on a reply key must do, and nothing else."""


def bare_serve(url: str, stop: Any, ready: Any, reply_bytes: int) -> None:
    """The floor's worker: wake on a token, take, answer with ``reply_bytes`` bytes."""
    client = redis.Redis.from_url(url)
    take, finish = client.register_script(BARE_TAKE), client.register_script(BARE_FINISH)
    reply = b"v" * reply_bytes
    ready.set()
    while not stop.is_set():
        if client.blpop([f"{BARE_QUEUE}:wake"], timeout=0.2) is None:
            continue
        for raw in take(keys=[BARE_QUEUE, f"{BARE_QUEUE}:processing"], args=[8])[2:]:
            rid = bytes(raw).split(b"|", 1)[0].decode()
            finish(keys=[f"{BARE_QUEUE}:processing", f"{BARE_QUEUE}:reply:{rid}"], args=[reply, raw])


def bare_ask(client: redis.Redis, enqueue: Any, n: int, text: str) -> None:
    """One question through the floor's queue."""
    rid = f"q{n}"
    enqueue(keys=[BARE_QUEUE, f"{BARE_QUEUE}:wake"], args=[10_000, f"{rid}|{text}".encode()])
    if client.blpop([f"{BARE_QUEUE}:reply:{rid}"], timeout=5) is None:
        raise SystemExit("the floor's worker did not answer")


def serve(target: str, url: str, stop: Any, ready: Any, events_path: str) -> None:
    """The worker process: the real loop on one ONNX export, every command and encode timed;
    its events are written to ``events_path`` when ``stop`` is set."""
    recorder = Recorder()
    encoder = OnnxEncoder(Path(target), threads=2)
    settings = Settings(redis_url=url, queue=QUEUE, worker_id="overhead", model=target)
    client = redis.Redis.from_url(url)
    recorder.watch("worker", client)
    worker = Worker(settings, encoder, client)
    worker.warm_up()
    recorder.watch_encoder("worker", worker.encoder)
    ready.set()
    while not stop.is_set():
        worker.serve_once(block=0.2)
    Path(events_path).write_text(json.dumps(recorder.events))


def throughput(
    client: EmbeddingClient, local: OnnxEncoder, texts: list[str], seconds: float, producers: int
) -> dict[str, float]:
    """Texts per second: ``producers`` threads of this process each asking one question at a time
    through the queue (a chatbot API's threads), then the same encoder in-process on batches of 8,
    one after another (the queue's ceiling)."""
    done = [0] * producers
    halt = threading.Event()

    def ask(k: int) -> None:
        i = k
        while not halt.is_set():
            client.embed([texts[i % len(texts)]])
            done[k] += 1
            i += producers

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(producers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # warm-up: counted from here
    before, started = sum(done), time.perf_counter()
    time.sleep(seconds)
    queued = (sum(done) - before) / (time.perf_counter() - started)
    halt.set()
    for thread in threads:
        thread.join()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds / 2:
        local.encode([texts[(n + k) % len(texts)] for k in range(8)], ["query"] * 8)
        n += 8
    inproc = n / (time.perf_counter() - started)
    return {"queue_texts_per_s": round(queued, 1), "inproc_batch8_texts_per_s": round(inproc, 1)}


def stages(mine: list[Event], start: float, end: float) -> dict[str, float] | None:
    """One question's stages (ms) from the events that overlap its call, or None if they do not
    line up."""
    enqueue = next((e for e in mine if e[0] == "producer" and e[1] == "EVALSHA"), None)
    encode = next((e for e in mine if e[0] == "worker" and e[1] == "encode"), None)
    if enqueue is None or encode is None:
        return None
    # the take that got the question ended after the enqueue began (it may end before the
    # producer has the enqueue's answer: Redis wakes the worker's blocking pop first); an idle
    # worker's take is the end of its wait-and-take pipeline, which began before the question
    scripts = [e for e in mine if e[0] == "worker" and e[1] in ("EVALSHA", "BLPOP+EVALSHA")]
    takes = [e for e in scripts if enqueue[2] <= e[3] <= encode[2]]
    replies = [e for e in scripts if e[2] >= encode[3]]
    if not takes or not replies:
        return None
    take, finish = takes[0], replies[0]
    tokenize = sum(e[3] - e[2] for e in mine if e[0] == "worker" and e[1] == "tokenize")
    ms = 1000.0
    return {
        "producer": (enqueue[2] - start) * ms,
        "enqueue + take": (take[3] - enqueue[2]) * ms,
        "admit": (encode[2] - take[3] - tokenize) * ms,
        "model": (encode[3] - encode[2] + tokenize) * ms,
        "reply": (finish[2] - encode[3]) * ms,
        "finish + producer wake": (end - finish[2]) * ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--idle-ms", type=float, default=20.0, help="pause before each question")
    parser.add_argument("--load-s", type=float, default=10.0, help="seconds of closed-loop load")
    parser.add_argument("--producers", type=int, default=10, help="producer threads of the load")
    parser.add_argument(
        "--export", type=Path, help="serve this export (embedq-worker export) instead of the bundled model's"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    recorder = Recorder()
    server = RedisServer()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="embedq-overhead-") as folder:
        target = args.export or Path(folder) / "onnx"
        if args.export is None:
            export(str(bundled_model_path()), target)
        events_path = str(Path(folder) / "worker-events.json")
        stop, ready = context.Event(), context.Event()
        process = context.Process(target=serve, args=(str(target), server.url, stop, ready, events_path))
        process.start()
        if not ready.wait(900):  # a large model's warm-up calibrates its cost model
            raise SystemExit("the worker process did not start")
        client = EmbeddingClient.from_url(server.url, queue=QUEUE, timeout=5.0)
        recorder.watch("producer", client.redis)
        local = OnnxEncoder(target, threads=2)
        bare_ready = context.Event()
        reply_bytes = 4 * local.dim + 200  # the vector and a reply's fields
        bare = context.Process(target=bare_serve, args=(server.url, stop, bare_ready, reply_bytes))
        bare.start()
        if not bare_ready.wait(60):
            raise SystemExit("the floor's worker did not start")
        bare_client = redis.Redis.from_url(server.url)
        bare_enqueue = bare_client.register_script(BARE_ENQUEUE)
        texts = [RECORD_QUERIES[i % len(RECORD_QUERIES)] + f" {i}" for i in range(args.questions + 20)]
        calls: list[tuple[float, float, float, float]] = []
        try:
            for n, text in enumerate(texts):
                time.sleep(args.idle_ms / 1000)
                started = time.perf_counter()
                local.encode([text], ["query"])
                alone = (time.perf_counter() - started) * 1000
                time.sleep(args.idle_ms / 1000)
                started = time.perf_counter()
                bare_ask(bare_client, bare_enqueue, n, text)
                floor = (time.perf_counter() - started) * 1000
                time.sleep(args.idle_ms / 1000)
                start = time.perf_counter()
                client.embed([text])
                calls.append((start, time.perf_counter(), alone, floor))
            load = throughput(client, local, texts, args.load_s, args.producers)
        finally:
            stop.set()
            process.join(30)
            bare.join(30)
            server.stop()
        events = recorder.events + [tuple(e) for e in json.loads(Path(events_path).read_text())]
    events.sort(key=lambda e: e[2])
    rows: list[dict[str, float]] = []
    inproc: list[float] = []
    queued: list[float] = []
    floors: list[float] = []
    trips: list[int] = []
    for start, end, alone, floor in calls[20:]:  # after warm-up
        mine = [e for e in events if e[3] >= start and e[2] <= end]  # overlapping the call
        split = stages(mine, start, end)
        if split is not None:
            rows.append(split)
            inproc.append(alone)
            floors.append(floor)
            queued.append((end - start) * 1000)
            trips.append(sum(1 for e in mine if e[0] == "worker" and e[1] not in MODEL_WORK))
    p50 = {s: statistics.median(r[s] for r in rows) for s in STAGES}
    result: dict[str, Any] = {
        "questions": len(rows),
        "worker_commands_p50": statistics.median(trips),
        **load,
        "idle_ms": args.idle_ms,
        "stages_p50_ms": {s: round(v, 3) for s, v in p50.items()},
        "queued_p50_ms": round(statistics.median(queued), 3),
        "queued_p95_ms": round(percentile(sorted(queued), 95), 3),
        "inproc_p50_ms": round(statistics.median(inproc), 3),
        "inproc_p95_ms": round(percentile(sorted(inproc), 95), 3),
        "queue_cost_p50_ms": round(
            statistics.median(q - e["model"] for q, e in zip(queued, rows, strict=True)), 3
        ),
        "floor_p50_ms": round(statistics.median(floors), 3),
        "floor_p95_ms": round(percentile(sorted(floors), 95), 3),
    }
    result["over_floor_p50_ms"] = round(result["queue_cost_p50_ms"] - result["floor_p50_ms"], 3)
    lines = [
        "# A lone question: where the time goes",
        "",
        f"`benchmarks/overhead.py --questions {args.questions} --idle-ms {args.idle_ms:g}`: "
        f"{'the export at ' + str(args.export) if args.export else 'all-MiniLM-L6-v2 exported to ONNX'}, "
        "ONNX Runtime 2 threads, the worker loop in a process of its own, one clock "
        f"for both, a real Redis; {len(rows)} lone questions, each after {args.idle_ms:g} ms idle, "
        "interleaved with the same encode in-process and with the floor (the same five Redis events "
        "between bare redis-py processes that do nothing else).",
        "",
        "| stage | p50 ms |",
        "|---|---:|",
        *[f"| {s} | {p50[s]:.3f} |" for s in STAGES],
        f"| **the queue's own cost** (everything but the model's work; p50 per question) | "
        f"**{result['queue_cost_p50_ms']:.3f}** |",
        f"| the floor: the same Redis events, bare (p50) | {result['floor_p50_ms']:.3f} |",
        f"| embedq's cost over the floor | {result['over_floor_p50_ms']:.3f} |",
        "",
        f"Lone question through the queue: p50 {result['queued_p50_ms']:.2f} ms, p95 "
        f"{result['queued_p95_ms']:.2f} ms; the same encode in-process (batch 1): p50 "
        f"{result['inproc_p50_ms']:.2f} ms, p95 {result['inproc_p95_ms']:.2f} ms. The worker sent "
        f"{result['worker_commands_p50']:g} Redis commands per lone question (p50).",
        "",
        f"{args.producers} producer threads in one process, one question each at a time: "
        f"{load['queue_texts_per_s']:.1f} texts/s through the queue; the same encoder in-process on "
        f"batches of 8: {load['inproc_batch8_texts_per_s']:.1f} texts/s "
        f"({load['queue_texts_per_s'] / load['inproc_batch8_texts_per_s']:.2f}x).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.md").write_text(text)
        (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
