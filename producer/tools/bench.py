"""``embedq bench``: the design record's sweep, re-run in three modes side by side, plus the targets.

Modes, for the same model in one run:
  inproc  ``model.encode`` called directly, one call at a time (the limit),
  naive   N threads calling ``model.encode`` at once (the design record's problem),
  queue   N producers through Redis and one worker process (this project's design).
Every number that matters is a ratio between modes measured minutes apart on the same machine,
so machine noise largely cancels. Output: a Markdown table, a JSON file and a PNG chart.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from embedq import EmbeddingClient
from embedq.clock import time_reply_ms
from embedq.protocol import Keys, Request, new_request_id

from .local import RedisServer, WorkerProcess

SHORT_TEXTS = [
    "연남 카페 추천해줘",
    "강남역 맛집 어디야?",
    "비건 베이커리 있나요?",
    "여의도 회식 장소 추천",
    "파스타 맛있는 데 알려줘",
]
"""The design record's online queries (section 5.1)."""
LONG_TEXT = (
    "이 매장은 브런치와 스페셜티 커피를 함께 제공하며, 평일 오후에 방문객이 많고 "
    "주차 공간이 협소합니다. 시그니처 메뉴로는 수제 치아바타 샌드위치와 싱글 오리진 핸드드립이 있습니다. "
    "주말에는 예약을 권장하며, 반려동물 동반이 가능합니다."
)
"""The design record's ~150-character store description."""

POLICY_CONFIGS = {
    "adaptive": {"EMBED_BATCH_POLICY": "adaptive", "EMBED_BATCH_WAIT_MS": "50"},
    "fixed-50ms": {"EMBED_BATCH_POLICY": "fixed", "EMBED_BATCH_WAIT_MS": "50"},
    "wait-0": {"EMBED_BATCH_POLICY": "fixed", "EMBED_BATCH_WAIT_MS": "0"},
}
"""Batching policies compared in the targets section (worker environment for each)."""


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


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    k = (len(sorted_values) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(sorted_values) - 1)
    return sorted_values[f] + (sorted_values[c] - sorted_values[f]) * (k - f)


@dataclass(frozen=True)
class Plan:
    """What to measure."""

    threads: tuple[int, ...] = (1, 2, 4)
    batches: tuple[int, ...] = (1, 4, 8, 16)
    concurrency: tuple[int, ...] = (1, 5, 10)
    lengths: tuple[str, ...] = ("short", "long")
    requests: int = 100
    max_seconds: float = 10.0
    target_requests: int = 800
    policies: tuple[str, ...] = tuple(POLICY_CONFIGS)
    overhead_batches: int = 200
    backends: tuple[str, ...] = ("torch", "onnx")
    """Worker backends compared in the targets: torch runs every policy, the others the adaptive
    one on an export of the model (``export``, else made in a temporary folder)."""
    cache_hit_ratio: float = 0.5
    """Share of the texts that repeat in the query-cache variant (0: no cache variant)."""
    export: str | None = None

    @classmethod
    def quick(cls) -> Plan:
        """About four minutes on a 2-core machine with the bundled model (with the onnx export)."""
        return cls(
            threads=(2,),
            batches=(1, 8),
            concurrency=(1, 10),
            lengths=("short",),
            requests=24,
            max_seconds=2.0,
            target_requests=128,
            policies=("adaptive", "fixed-50ms"),
            overhead_batches=30,
        )

    def check(self) -> None:
        """``ValueError`` naming what is wrong with the plan."""
        unknown = set(self.policies) - set(POLICY_CONFIGS)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; choose from {sorted(POLICY_CONFIGS)}")
        bad = set(self.backends) - {"torch", "onnx", "openvino"}
        if bad or not self.backends:
            raise ValueError(f"unknown backends {sorted(bad)}; choose from torch, onnx, openvino")
        if not 0.0 <= self.cache_hit_ratio <= 1.0:
            raise ValueError(f"cache hit ratio must be within 0..1, got {self.cache_hit_ratio}")


class Texts:
    """Texts by length class; each request gets distinct texts so nothing is cached."""

    def __init__(self, short: Sequence[str], long: Sequence[str]) -> None:
        self.pools = {"short": list(short), "long": list(long)}
        self._n = 0
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> Texts:
        """One text per line; lines of over 100 characters count as long."""
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        short = [t for t in lines if len(t) <= 100] or lines
        long = [t for t in lines if len(t) > 100] or lines
        return cls(short, long)

    def take(self, length: str, n: int) -> list[str]:
        with self._lock:
            start, self._n = self._n, self._n + n
        pool = self.pools[length]
        return [f"{pool[i % len(pool)]} ({i})" for i in range(start, start + n)]


class TextSource(Protocol):
    """Where a measurement takes its texts from."""

    def take(self, length: str, n: int) -> list[str]: ...


class RepeatingTexts:
    """Texts of which a set share repeat (the questions a chatbot hears again and again), the
    rest distinct: text i repeats when ``floor((i + 1) * ratio)`` passes an integer, so the share
    is exact at any count."""

    def __init__(self, texts: Texts, ratio: float, repeated: Sequence[str]) -> None:
        self.texts = texts
        self.ratio = ratio
        self.repeated = list(repeated)
        self._n = 0
        self._lock = threading.Lock()

    def take(self, length: str, n: int) -> list[str]:
        with self._lock:
            start, self._n = self._n, self._n + n
        out = []
        for i in range(start, start + n):
            if int((i + 1) * self.ratio) > int(i * self.ratio):
                out.append(self.repeated[i % len(self.repeated)])
            else:
                out.extend(self.texts.take(length, 1))
        return out


@dataclass(frozen=True)
class Variant:
    """One worker configuration of the targets: a batching policy, a backend, the query cache."""

    name: str
    backend: str
    policy: str
    env: dict[str, str]
    cache: bool = False


def variants(plan: Plan, model: str, export_dir: str | None, cache_url: str | None) -> dict[str, Variant]:
    """The policies on torch, then each other backend (adaptive), then the cache on the last."""
    out: dict[str, Variant] = {}
    if "torch" in plan.backends:
        for policy in plan.policies:
            env = {**POLICY_CONFIGS[policy], "EMBEDDING_MODEL": model, "EMBED_THREADS": "2"}
            out[policy] = Variant(policy, "torch", policy, env)
    for backend in plan.backends:
        if backend != "torch":
            assert export_dir is not None
            env = {**POLICY_CONFIGS["adaptive"], "EMBEDDING_MODEL": export_dir, "EMBED_BACKEND": backend,
                   "EMBED_THREADS": "2"}  # fmt: skip
            out[backend] = Variant(backend, backend, "adaptive", env)
    if plan.cache_hit_ratio > 0 and cache_url:
        last = plan.backends[-1]
        base = out[last if last != "torch" else next(iter(out))]
        env = {**base.env, "EMBED_CACHE_URL": cache_url}
        name = f"{base.name}+cache"
        out[name] = Variant(name, base.backend, base.policy, env, cache=True)
    return out


def make_export(model: str, log: Callable[[str], None]) -> str:
    """An export of ``model`` in a temporary folder (``embedq-worker export``; needs the export extra)."""
    import subprocess
    import sys
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="embedq-bench-export-")) / "model"
    log(f"exporting {model_label(model)} for the onnx/openvino variants into {target}")
    subprocess.run([sys.executable, "-m", "embedq.worker", "export", model, "--out", str(target)], check=True)
    return str(target)


# --- the three modes ----------------------------------------------------------------------------


STEADY_MIN = 10
"""Calls needed before throughput is taken from the steady middle of a run."""


def steady_window(done_at: Sequence[float]) -> tuple[int, float]:
    """Calls completed and seconds elapsed between the 10th and 90th percentile completions:
    throughput without the ramp-up and the ragged end of a closed-loop run."""
    xs = sorted(done_at)
    a, b = len(xs) // 10, len(xs) - 1 - len(xs) // 10
    return b - a, xs[b] - xs[a]


def closed_loop(
    call: Callable[[], None], concurrency: int, requests: int, max_seconds: float, pause_s: float = 0.0
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


class InProcess:
    """The model called directly, as the design record's benchmark did."""

    def __init__(self, model: str, prefix: str = "") -> None:
        from embedq.worker.encoder import set_thread_env

        set_thread_env(2)
        import torch
        from sentence_transformers import SentenceTransformer

        self.torch = torch
        self.model = SentenceTransformer(model, device="cpu")
        self.prefix = prefix

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def encode(self, texts: list[str]) -> None:
        self.model.encode(
            [self.prefix + t for t in texts],
            normalize_embeddings=True,
            prompt="",
            batch_size=max(len(texts), 1),
        )


def measure_inproc(
    enc: InProcess,
    texts: Texts,
    length: str,
    batch: int,
    concurrency: int,
    plan_requests: int,
    max_seconds: float,
    mode: str,
    *,
    warm: bool = True,
) -> Cell:
    cell = Cell(
        mode=mode, threads=enc.torch.get_num_threads(), length=length, batch=batch, concurrency=concurrency
    )
    if warm:
        enc.encode(texts.take(length, batch))  # warm this shape
    cell.record(
        *closed_loop(lambda: enc.encode(texts.take(length, batch)), concurrency, plan_requests, max_seconds)
    )
    return cell


def measure_queue(
    client: EmbeddingClient,
    texts: TextSource,
    length: str,
    batch: int,
    concurrency: int,
    requests: int,
    max_seconds: float,
    threads: int,
    policy: str,
    *,
    pause_s: float = 0.0,
    warm: bool = True,
) -> Cell:
    cell = Cell(
        mode="queue", threads=threads, length=length, batch=batch, concurrency=concurrency, policy=policy
    )
    if warm:
        client.embed(texts.take(length, batch))

    def one() -> None:
        client.embed(texts.take(length, batch))

    # pause_s: the worker goes idle between lone requests (the pause is not timed)
    latencies, elapsed, done_at = closed_loop(one, concurrency, requests, max_seconds, pause_s)
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
        Request(
            id=new_request_id(),
            kind="query",
            texts=[f"{SHORT_TEXTS[i % 5]} {i}"],
            deadline_ms=now_ms + 600_000,
            sent_ms=now_ms,
        ).pack()
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


# --- the run ------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on."""
    import sentence_transformers
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import redis

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "redis_py": redis.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run(plan: Plan, model: str, texts: Texts, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the sweep and the targets; returns everything as plain data."""
    plan.check()
    server = RedisServer()
    cache = RedisServer() if plan.cache_hit_ratio > 0 else None
    if cache is not None:
        admin = cache.client()
        admin.config_set("maxmemory", "256mb")
        admin.config_set("maxmemory-policy", "allkeys-lru")
    export_dir = plan.export
    if export_dir is None and any(b != "torch" for b in plan.backends):
        export_dir = make_export(model, log)
    cells: list[Cell] = []
    result: dict[str, Any] = {"model": model, "machine": machine_facts(), "plan": asdict(plan)}
    try:
        enc = InProcess(model)
        for threads in plan.threads:
            enc.set_threads(threads)
            for length in plan.lengths:
                for batch in plan.batches:
                    cells.append(
                        measure_inproc(
                            enc, texts, length, batch, 1, plan.requests, plan.max_seconds, "inproc"
                        )
                    )
                    log(fmt(cells[-1]))
                    for conc in [c for c in plan.concurrency if c > 1]:
                        cells.append(
                            measure_inproc(
                                enc, texts, length, batch, conc, plan.requests, plan.max_seconds, "naive"
                            )
                        )
                        log(fmt(cells[-1]))
            worker = WorkerProcess(
                server.url,
                f"bench-t{threads}:requests",
                {"EMBED_THREADS": str(threads), "EMBEDDING_MODEL": model},
            )
            try:
                client = EmbeddingClient.from_url(server.url, queue=worker.queue, timeout=120, max_queue=None)
                for length in plan.lengths:
                    for conc in plan.concurrency:
                        cells.append(
                            measure_queue(
                                client,
                                texts,
                                length,
                                1,
                                conc,
                                plan.requests,
                                plan.max_seconds,
                                threads,
                                "adaptive",
                            )
                        )
                        log(fmt(cells[-1]))
            finally:
                worker.terminate()
        result["sweep"] = [c.summary() for c in cells]
        chosen = variants(plan, model, export_dir, cache.url if cache else None)
        result["targets"] = measure_targets(plan, enc, server, model, texts, chosen, log)
    finally:
        server.stop()
        if cache is not None:
            cache.stop()
    return result


ROUNDS = 8
OMP_QUIET_S = 0.25
"""Pause before timing a variant's requests: after an encode, torch's OpenMP threads (in this
process, or in a torch worker) keep spinning on both cores for KMP_BLOCKTIME (200 ms), and would
slow whatever is timed next (seen: a cache hit at 5.4 ms instead of 0.3 ms right after one)."""
"""Target cells are measured in this many interleaved rounds, so slow drifts of a noisy machine
hit every mode alike."""


def measure_targets(
    plan: Plan,
    enc: InProcess,
    server: RedisServer,
    model: str,
    texts: Texts,
    chosen: dict[str, Variant],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The targets at 2 threads with short texts, ``target_requests`` per cell, every variant
    (policy, backend, cache) interleaved round by round: each round times a block of in-process
    batch-1 encodes, then a block of lone requests per variant, all with the same 5 ms gaps. The
    cache variant's texts repeat at ``cache_hit_ratio``; its all-hits idle cell is the cached
    query's latency."""
    n = plan.target_requests
    per_round = max(1, n // ROUNDS)
    enc.set_threads(2)
    workers = {name: WorkerProcess(server.url, f"bench-{name}:requests", v.env) for name, v in chosen.items()}
    try:
        clients = {}
        feeds: dict[str, TextSource] = {}
        for name, v in chosen.items():
            cache_url = v.env.get("EMBED_CACHE_URL") if v.cache else None
            clients[name] = EmbeddingClient.from_url(
                server.url, queue=workers[name].queue, timeout=120, max_queue=None, cache_url=cache_url
            )
            feeds[name] = RepeatingTexts(texts, plan.cache_hit_ratio, SHORT_TEXTS) if v.cache else texts
            if v.cache:  # the repeated questions were asked before: their vectors are cached
                for text in SHORT_TEXTS:
                    clients[name].embed([text])
                time.sleep(0.2)
        repeats = Texts(SHORT_TEXTS, [LONG_TEXT])
        hits_only = RepeatingTexts(repeats, 1.0, SHORT_TEXTS)
        cells: dict[str, Cell] = {}

        def add(key: str, cell: Cell) -> None:
            if key not in cells:
                cells[key] = cell
            else:
                cells[key].latencies_ms += cell.latencies_ms
                cells[key].elapsed_s += cell.elapsed_s
                cells[key].steady += cell.steady

        for _ in range(ROUNDS):
            add("inproc_bs8", measure_inproc(enc, texts, "short", 8, 1, per_round, 600, "inproc"))
            add("naive_c10", measure_inproc(enc, texts, "short", 1, 10, per_round, 600, "naive"))
            for name, client in clients.items():
                time.sleep(OMP_QUIET_S)  # after the last encode, in this process or a torch worker
                feed = feeds[name]
                add(f"{name}_c10", measure_queue(client, feed, "short", 1, 10, per_round, 600, 2, name))
            for _ in range(per_round):  # idle: a block in-process, then a block per variant
                add("inproc_bs1", measure_inproc(enc, texts, "short", 1, 1, 1, 600, "inproc"))
                time.sleep(0.005)
            for name, client in clients.items():
                time.sleep(OMP_QUIET_S)
                for _ in range(per_round):
                    add(
                        f"{name}_idle",
                        measure_queue(client, feeds[name], "short", 1, 1, 1, 600, 2, name, pause_s=0.005),
                    )
                if chosen[name].cache:  # hits at idle: after the worker's last encode has settled
                    time.sleep(OMP_QUIET_S)
                    for _ in range(per_round):
                        add(
                            f"{name}_hit",
                            measure_queue(client, hits_only, "short", 1, 1, 1, 600, 2, name, pause_s=0.005),
                        )
        cache_stats = {name: c.cache.stats() for name, c in clients.items() if c.cache is not None}
    finally:
        for w in workers.values():
            w.terminate()
    base_bs1, base_bs8, naive10 = (cells[k].summary() for k in ("inproc_bs1", "inproc_bs8", "naive_c10"))
    log(
        f"targets baseline: inproc bs1 p50 {base_bs1['p50_ms']:.1f} ms, "
        f"bs8 {base_bs8['texts_per_s']:.0f} texts/s, naive c10 p95 {naive10['p95_ms']:.1f} ms"
    )
    results = {}
    for name, v in chosen.items():
        idle, loaded = cells[f"{name}_idle"].summary(), cells[f"{name}_c10"].summary()
        results[name] = {
            "backend": v.backend,
            "policy": v.policy,
            "cache_hit_ratio": plan.cache_hit_ratio if v.cache else 0.0,
            "idle": idle,
            "c10": loaded,
            "t1_throughput_ratio": loaded["texts_per_s"] / base_bs8["texts_per_s"],
            "t2_p95_ratio": loaded["p95_ms"] / naive10["p95_ms"],
            "t3_idle_extra_ms": idle["p50_ms"] - base_bs1["p50_ms"],
            "idle_ratio": idle["p50_ms"] / base_bs1["p50_ms"],
        }
        if v.cache:
            results[name]["cache_hit_idle"] = cells[f"{name}_hit"].summary()
            results[name]["cache_stats"] = cache_stats.get(name)
        r = results[name]
        log(
            f"{name}: throughput {r['t1_throughput_ratio']:.2f}x in-process batch-8, "
            f"p95 {r['t2_p95_ratio']:.2f}x naive, idle p50 "
            f"{r['idle_ratio']:.2f}x in-process batch-1 ({r['t3_idle_extra_ms']:+.1f} ms)"
            + (f", cached query p50 {r['cache_hit_idle']['p50_ms']:.2f} ms" if v.cache else "")
        )
    overhead = measure_overhead(server, model, plan.overhead_batches)
    log(f"per-batch overhead (batch of 8, excluding encode): p50 {overhead['p50_ms']:.2f} ms")
    return {
        "inproc_bs1": base_bs1,
        "inproc_bs8": base_bs8,
        "naive_c10": naive10,
        "policies": results,
        "overhead": overhead,
        "rounds": ROUNDS,
    }


def model_label(model: str) -> str:
    """A short name for a hub id or a local path (the bundled model lives in .../<package>/model)."""
    parts = [p for p in Path(model).parts if p not in ("/", "model")]
    return parts[-1] if os.path.exists(model) and parts else model


def fmt(cell: Cell) -> str:
    s = cell.summary()
    return (
        f"{s['mode']:6} t={s['threads']} {s['length']:5} bs={s['batch']:2} conc={s['concurrency']:2} | "
        f"avg={s['avg_ms']:.1f} p50={s['p50_ms']:.1f} p95={s['p95_ms']:.1f} max={s['max_ms']:.1f} ms | "
        f"{s['per_text_ms']:.1f} ms/text, {s['texts_per_s']:.0f} texts/s ({s['requests']} req)"
    )


# --- reports ------------------------------------------------------------------------------------

TARGETS = (
    ("t1_throughput_ratio", ">=", 0.95, "1. throughput, 10 producers / in-process batch-8"),
    ("t2_p95_ratio", "<=", 0.5, "2. p95 at concurrency 10 / naive-concurrent p95"),
    ("t3_idle_extra_ms", "<=", 2.0, "3. one request at idle: p50 - in-process batch-1 p50 (ms)"),
    ("idle_ratio", "<=", 1.0, "3b. one request at idle: p50 / in-process batch-1 p50"),
)
"""The queue's own targets (the in-process baselines are torch). The onnx backend's goals from its
issue: throughput >= 1.5x and idle <= 0.5x; a cached query: p50 <= 1 ms."""


def markdown(result: dict[str, Any]) -> str:
    """The report: machine, targets per policy, then the sweep."""
    m, t = result["machine"], result["targets"]
    lines = [
        f"# embedq bench: {model_label(result['model'])}",
        "",
        f"{m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
        f"sentence-transformers {m['sentence_transformers']}, redis-py {m['redis_py']}; {m['date']}.",
        "",
        "## Targets (2 threads, short texts)",
        "",
        f"Baselines: in-process batch-1 p50 {t['inproc_bs1']['p50_ms']:.1f} ms; in-process batch-8 "
        f"{t['inproc_bs8']['texts_per_s']:.0f} texts/s; naive concurrent (10 threads) p95 "
        f"{t['naive_c10']['p95_ms']:.1f} ms.",
        "",
        "Columns: the batching policies on torch, then each other backend (adaptive policy), then "
        "the query cache on the last one, its texts repeating at the stated hit ratio (`+cache`). "
        "Baselines are in-process torch.",
        "",
        "| target | goal | " + " | ".join(t["policies"]) + " |",
        "|---|---|" + "---|" * len(t["policies"]),
    ]
    for key, op, goal, label in TARGETS:
        row = [
            "-" if p.get(key) is None else f"{p[key]:.2f}{'' if ok(p[key], op, goal) else ' ✗'}"
            for p in t["policies"].values()
        ]
        lines.append(f"| {label} | {op} {goal:g} | " + " | ".join(row) + " |")
    ov = t["overhead"]
    lines += [
        f"| 4. worker time per batch of 8 besides encode, p50 (ms) | <= 1 | {ov['p50_ms']:.2f} "
        f"(p95 {ov['p95_ms']:.2f}; all policies) |" + " |" * (len(t["policies"]) - 1),
        "",
        "| variant | backend | policy | cache hit ratio | idle p50 | idle p95 | 10 producers: texts/s "
        "| p50 | p95 | max | cached query p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in t["policies"].items():
        i, c = p["idle"], p["c10"]
        hit = p.get("cache_hit_idle")
        lines.append(
            f"| {name} | {p.get('backend', 'torch')} | {p.get('policy', name)} | "
            f"{p.get('cache_hit_ratio', 0.0):.0%} | {i['p50_ms']:.1f} ms | {i['p95_ms']:.1f} ms | "
            f"{c['texts_per_s']:.0f} | {c['p50_ms']:.1f} ms | {c['p95_ms']:.1f} ms | {c['max_ms']:.1f} ms | "
            f"{'-' if hit is None else format(hit['p50_ms'], '.2f') + ' ms'} |"
        )
    lines += [
        "",
        "## Sweep",
        "",
        "inproc: one encode at a time; naive: N threads encoding at once; queue: N producers sending "
        "one text per request through Redis to one worker (adaptive policy). Latency per request (one "
        "encode call, or one round trip); per-text cost = wall time / texts.",
        "",
        "| mode | threads | texts | batch | concurrency | requests | avg ms | p50 ms | p95 ms | max ms "
        "| ms/text | texts/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["sweep"]:
        lines.append(
            f"| {s['mode']} | {s['threads']} | {s['length']} | {s['batch']} | {s['concurrency']} | "
            f"{s['requests']} | {s['avg_ms']:.1f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
            f"{s['max_ms']:.1f} | {s['per_text_ms']:.1f} | {s['texts_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def ok(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


def chart(result: dict[str, Any], path: Path) -> None:
    """Latency vs concurrency per mode, and per-text cost vs batch size (threads=2 where present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    threads = 2 if any(s["threads"] == 2 for s in sweep) else sweep[0]["threads"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for length, style in (("short", "-"), ("long", "--")):
        for mode, color in (("naive", "tab:red"), ("queue", "tab:blue")):
            # naive at concurrency 1 is the in-process cell
            pts = sorted(
                (s["concurrency"], s["p95_ms"])
                for s in sweep
                if (s["mode"] == mode or (mode == "naive" and s["mode"] == "inproc"))
                and s["threads"] == threads
                and s["length"] == length
                and s["batch"] == 1
            )
            if len(pts) > 1:
                xs, ys = zip(*pts, strict=True)
                left.plot(xs, ys, style, color=color, marker="o", label=f"{mode} ({length})")
        pts = sorted(
            (s["batch"], s["per_text_ms"])
            for s in sweep
            if s["mode"] == "inproc" and s["threads"] == threads and s["length"] == length
        )
        if pts:
            right.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                color="tab:green",
                marker="o",
                label=f"in-process ({length})",
            )
    left.set(
        xlabel="concurrent requests",
        ylabel="p95 latency per request (ms)",
        title=f"p95 latency vs concurrency (1 text per request, {threads} threads)",
    )
    left.legend()
    right.set(
        xlabel="batch size (texts per encode)",
        ylabel="ms per text",
        title=f"per-text cost vs batch size ({threads} threads)",
    )
    right.legend()
    fig.suptitle(f"embedq bench: {model_label(result['model'])} on {result['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(result: dict[str, Any], out: Path) -> list[Path]:
    """results.md, results.json and chart.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "results.md", out / "results.json", out / "chart.png"
    md.write_text(markdown(result), encoding="utf-8")
    js.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    chart(result, png)
    return [md, js, png]
