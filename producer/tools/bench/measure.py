"""The measurements of ``embedq bench``: closed-loop runs in-process, naive-concurrent and through
the queue, and the worker's per-batch overhead. Each returns a ``Cell`` of raw latencies."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from embedq import EmbeddingClient
from embedq.clock import time_reply_ms
from embedq.protocol import Keys, Request
from embedq.stats import percentile

from ..local import RedisServer
from ..reference import ReferenceModel
from .plan import SHORT_TEXTS, TextSource


@dataclass(frozen=True)
class Load:
    """One closed-loop load: ``concurrency`` callers sending ``batch`` texts of ``length`` per
    request, until ``requests`` are done or ``max_seconds`` passed."""

    length: str
    batch: int
    concurrency: int
    requests: int
    max_seconds: float = 600.0


@dataclass
class Cell:
    """One measured configuration."""

    mode: str
    threads: int
    length: str
    batch: int
    concurrency: int
    policy: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    elapsed_s: float = 0.0
    steady: list[tuple[int, float]] = field(default_factory=list, repr=False)
    """(calls, seconds) of each run's steady middle, for throughput."""

    def record(self, latencies: list[float], elapsed: float, done_at: list[float]) -> None:
        """Add one closed-loop run."""
        self.latencies_ms += latencies
        self.elapsed_s += elapsed
        if len(done_at) >= STEADY_MIN:
            self.steady.append(steady_window(done_at))

    def texts_per_s(self) -> float:
        """Throughput: from the steady middles when there are any, else overall."""
        calls, seconds = sum(c for c, _ in self.steady), sum(t for _, t in self.steady)
        if calls and seconds > 0:
            return calls * self.batch / seconds
        return self.requests * self.batch / self.elapsed_s

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, Any]:
        xs = sorted(self.latencies_ms)
        return {
            "mode": self.mode,
            "policy": self.policy,
            "threads": self.threads,
            "length": self.length,
            "batch": self.batch,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "avg_ms": statistics.fmean(xs),
            "p50_ms": percentile(xs, 50),
            "p95_ms": percentile(xs, 95),
            "max_ms": xs[-1],
            "per_text_ms": 1000 / self.texts_per_s(),
            "texts_per_s": self.texts_per_s(),
        }


STEADY_MIN = 10
"""Calls needed before throughput is taken from the steady middle of a run."""


def steady_window(done_at: Sequence[float]) -> tuple[int, float]:
    """Calls completed and seconds elapsed between the 10th and 90th percentile completions:
    throughput without the ramp-up and the ragged end of a closed-loop run."""
    xs = sorted(done_at)
    a, b = len(xs) // 10, len(xs) - 1 - len(xs) // 10
    return b - a, xs[b] - xs[a]


def closed_loop(
    call: Callable[[], object], concurrency: int, requests: int, max_seconds: float, pause_s: float = 0.0
) -> tuple[list[float], float, list[float]]:
    """``concurrency`` threads each calling ``call`` back to back (or ``pause_s`` apart, untimed)
    until ``requests`` calls are done or ``max_seconds`` passed; returns each call's latency (ms),
    the wall time, and each call's completion time (perf_counter)."""
    done_at: list[float] = []
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds
    remaining = [requests]

    def loop() -> None:
        while True:
            with lock:
                if remaining[0] <= 0 or time.perf_counter() > deadline:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            call()
            finished = time.perf_counter()
            with lock:
                latencies.append((finished - started) * 1000)
                done_at.append(finished)
            if pause_s:
                time.sleep(pause_s)

    started = time.perf_counter()
    if concurrency == 1:  # in this thread: a fresh thread per cell would make torch build a new
        loop()  # OpenMP team for it (seen: in-process batch 1 at 22.9 ms instead of ~14 ms)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(loop) for _ in range(concurrency)]:
                f.result()
    return latencies, time.perf_counter() - started, done_at


def measure_inproc(
    enc: ReferenceModel, texts: TextSource, load: Load, mode: str, *, warm: bool = True
) -> Cell:
    """``load`` on the model called in this process: ``inproc`` at concurrency 1 (one encode at a
    time, the limit), ``naive`` above it (threads encoding at once, the design record's problem)."""
    cell = Cell(
        mode=mode, threads=enc.threads, length=load.length, batch=load.batch, concurrency=load.concurrency
    )
    if warm:
        enc.encode(texts.take(load.length, load.batch))  # warm this shape
    cell.record(
        *closed_loop(
            lambda: enc.encode(texts.take(load.length, load.batch)),
            load.concurrency,
            load.requests,
            load.max_seconds,
        )
    )
    return cell


def measure_queue(
    client: EmbeddingClient,
    texts: TextSource,
    load: Load,
    *,
    threads: int,
    policy: str,
    pause_s: float = 0.0,
    warm: bool = True,
) -> Cell:
    """``load`` through the queue; ``pause_s`` lets the worker go idle between lone requests
    (untimed, and left out of the throughput)."""
    cell = Cell(
        mode="queue",
        threads=threads,
        length=load.length,
        batch=load.batch,
        concurrency=load.concurrency,
        policy=policy,
    )
    if warm:
        client.embed(texts.take(load.length, load.batch))

    def one() -> None:
        client.embed(texts.take(load.length, load.batch))

    latencies, elapsed, done_at = closed_loop(one, load.concurrency, load.requests, load.max_seconds, pause_s)
    if pause_s:  # throughput of the requests, not of the pauses
        elapsed -= pause_s * len(latencies)
        done_at = []
    cell.record(latencies, elapsed, done_at)
    return cell


# --- per-batch overhead (target 4) --------------------------------------------------------------


def measure_overhead(server: RedisServer, model: str, batches: int = 200) -> dict[str, float]:
    """Everything the worker does for a batch of 8 except encode: take, decode, reply, bookkeeping.

    Runs the real worker loop in this process on the real Redis, with the queue pre-filled so no
    batch waits, and subtracts each batch's measured encode time from its serve time.
    """
    from embedq.worker.encoder import SentenceTransformerEncoder
    from embedq.worker.loop import Worker
    from embedq.worker.settings import Settings

    class Timed(SentenceTransformerEncoder):
        last = 0.0

        def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> Any:
            started = time.perf_counter()
            try:
                return super().encode(texts, kinds)
            finally:
                Timed.last = time.perf_counter() - started

    settings = Settings(
        redis_url=server.url,
        queue="bench-overhead:requests",
        worker_id="bench-overhead",
        batch_policy="fixed",
        batch_wait_ms=0,
        model=model,
    )
    encoder = Timed(model, threads=2)
    worker = Worker(settings, encoder, server.client())
    keys = Keys(settings.queue)
    r = server.client()
    now_ms = time_reply_ms(r.time())
    payloads = [
        Request.new("query", [f"{SHORT_TEXTS[i % 5]} {i}"], now_ms=now_ms, timeout_s=600).pack()
        for i in range(8 * (batches + 5))
    ]
    r.rpush(keys.queue, *payloads)
    overheads = []
    for n in range(batches + 5):
        started = time.perf_counter()
        worker.serve_once(block=0.1)
        total = time.perf_counter() - started
        if n >= 5:  # after warm-up
            overheads.append((total - Timed.last) * 1000)
    r.delete(*r.keys(f"{keys.namespace}:*"))
    xs = sorted(overheads)
    return {"batches": len(xs), "p50_ms": percentile(xs, 50), "p95_ms": percentile(xs, 95)}
