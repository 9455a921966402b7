"""What a worker reports: Prometheus metrics (``--metrics-port``) and a one-minute window of
request latencies for ``embedq status``. Names are prefixed ``embedq_``; request, text, batch and
time metrics carry a ``lane`` label (``online`` or ``bulk``)."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, Histogram, Info, start_http_server
from prometheus_client import Counter as PromCounter

from embedq.stats import percentile

OUTCOMES = ("ok", "error", "expired", "late", "dead", "retried")
"""What became of a request taken off the queue, exactly one each: ``ok`` vectors; ``error`` an
error reply; ``expired`` dropped unencoded past its deadline; ``late`` refused unencoded with
``deadline_exceeded`` because the batch's expected encode time would end past its deadline;
``dead`` dead-lettered (with an error reply when it had an id); ``retried`` put back for another
attempt."""

WINDOW_S = 60.0
LANES = ("online", "bulk")


class Metrics:
    """Counters and histograms of one worker, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = PromCounter(
            "embedq_requests", "Requests taken, by lane and outcome", ["lane", "outcome"], registry=r
        )
        self.texts = PromCounter("embedq_texts_encoded", "Texts encoded", ["lane"], registry=r)
        self.batch_size = Histogram(
            "embedq_batch_size",
            "Texts per encode",
            ["lane"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.queue_wait = Histogram(
            "embedq_queue_wait_seconds",
            "From a request's sending to a worker taking it",
            ["lane"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
            registry=r,
        )
        self.encode = Histogram(
            "embedq_encode_seconds",
            "Encode time per batch",
            ["lane"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.late_texts = PromCounter(
            "embedq_late_texts",
            "Texts encoded whose reply was written after the request's deadline (wasted work)",
            ["lane"],
            registry=r,
        )
        self.truncated_texts = PromCounter(
            "embedq_truncated_texts", "Texts cut to the model's token window (truncate=true)", registry=r
        )
        self.redis_errors = PromCounter(
            "embedq_redis_errors",
            "Redis errors the worker waited out, by kind (OOM, NOPERM...)",
            ["kind"],
            registry=r,
        )
        self._children = {lane: _LaneChildren(self, lane) for lane in LANES}
        """Each lane's labelled series, created at start (so every series shows from the first
        scrape) and looked up once: a label lookup costs more than the update, on every batch."""
        self.depth = Gauge("embedq_queue_depth", "Requests waiting, by queue", ["queue"], registry=r)
        self.cache_writes = PromCounter(
            "embedq_cache_writes", "Vectors this worker stored in the query cache", registry=r
        )
        self.cache_trouble = Gauge(
            "embedq_cache_trouble",
            "Query-cache writes that failed, and vectors dropped (cache slow, full or left alone)",
            ["what"],
            registry=r,
        )
        self.info = Info("embedq_worker", "Model and settings of this worker", registry=r)
        self.counts: Counter[str] = Counter()
        self._recent: deque[tuple[float, float]] = deque()

    def cache(self, stats: Mapping[str, object]) -> None:
        """Set the cache trouble gauges from the writer's counts (``CacheWriter.stats``)."""
        for what in ("errors", "dropped"):
            value = stats.get(what)
            if isinstance(value, int):
                self.cache_trouble.labels(what).set(value)

    def describe(self, info: Mapping[str, object]) -> None:
        """Set the info metric (model, dimension, device, threads, ...)."""
        self.info.info({k: str(v) for k, v in info.items()})

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (a daemon thread)."""
        start_http_server(port, registry=self.registry)

    def outcome(self, outcome: str, lane: str = "online", n: int = 1) -> None:
        """Count ``n`` requests of ``lane`` with this outcome (``counts``: ``ok``, ``bulk_ok``...)."""
        self._children[lane].requests[outcome].inc(n)
        self.counts[_count_name(outcome, lane)] += n

    def batch(self, texts: int, encode_s: float, lane: str = "online") -> None:
        """One encode of ``texts`` texts."""
        series = self._children[lane]
        series.texts.inc(texts)
        self.counts[_count_name("texts", lane)] += texts
        series.batch_size.observe(texts)
        series.encode.observe(encode_s)

    def late(self, texts: int, lane: str = "online") -> None:
        """``texts`` were encoded for a request whose reply went out past its deadline."""
        self._children[lane].late_texts.inc(texts)
        self.counts[_count_name("late_texts", lane)] += texts

    def truncated(self, texts: int) -> None:
        """``texts`` were cut to the model's token window."""
        self.truncated_texts.inc(texts)
        self.counts["truncated"] += texts

    def redis_error(self, kind: str) -> None:
        """One Redis error of ``kind`` (``connection``, ``OOM``, ``NOPERM``...)."""
        self.redis_errors.labels(kind).inc()
        self.counts["redis_errors"] += 1

    def answered(self, queue_ms: float, encode_ms: float, lane: str = "online") -> None:
        """One request answered with vectors after waiting ``queue_ms`` in its list; the
        last-minute window is of online requests only (bulk ones wait by design)."""
        self._children[lane].queue_wait.observe(queue_ms / 1000.0)
        if lane != "online":
            return
        now = time.monotonic()
        self._recent.append((now, queue_ms + encode_ms))
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()

    def last_minute(self) -> dict[str, float]:
        """Requests answered in the last minute and their p95 latency inside the worker
        (queue wait + encode), for ``embedq status``."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()
        latencies = sorted(lat for _, lat in self._recent)
        p95 = percentile(latencies, 95)
        return {"requests": len(latencies), "p95_ms": round(p95, 2), "window_s": WINDOW_S}


class _LaneChildren:
    """One lane's series of the labelled metrics."""

    def __init__(self, metrics: Metrics, lane: str) -> None:
        self.requests = {outcome: metrics.requests.labels(lane, outcome) for outcome in OUTCOMES}
        self.texts = metrics.texts.labels(lane)
        self.batch_size = metrics.batch_size.labels(lane)
        self.queue_wait = metrics.queue_wait.labels(lane)
        self.encode = metrics.encode.labels(lane)
        self.late_texts = metrics.late_texts.labels(lane)


def _count_name(what: str, lane: str) -> str:
    return what if lane == "online" else f"{lane}_{what}"
