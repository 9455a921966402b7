"""Capacity planning: how many workers for a rate of questions at a p95, from a measured
batch-time curve, by simulating the fleet with the workers' own batching code.

The simulation drives the real ``Batcher`` and policy (``embedq.worker.batching``) on simulated
clocks: Poisson arrivals of one-question requests into one queue, ``workers`` workers that each
take a batch (the policy's wait included), encode it for ``curve.ms(texts)``, and answer; a
question's latency is its answer time minus its arrival, plus the queue's own cost per request
(``overhead_ms``, measured: the queue's lone-question latency minus in-process). ``plan`` runs
it for 1, 2, ... workers and reports the first fleet whose p95 meets the target.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from embedq.stats import percentile
from embedq.worker.batching import Batcher, make_policy


@dataclass(frozen=True)
class Curve:
    """Encode ms of a batch of ``texts`` questions, from measured points (linear between them,
    extended along the last segment beyond them). With ``spread``, each batch's time is the
    curve's times one of its factors, drawn at random (variance lengthens queues)."""

    points: tuple[tuple[int, float], ...]
    spread: tuple[float, ...] = ()
    """Measured batch times divided by the curve's time for their size (``observed``), or none."""

    def __post_init__(self) -> None:
        if not self.points or any(b < 1 or ms <= 0 for b, ms in self.points):
            raise ValueError("a curve needs (batch size >= 1, ms > 0) points")

    @classmethod
    def of(cls, points: dict[int, float] | Sequence[tuple[int, float]]) -> Curve:
        items = points.items() if isinstance(points, dict) else points
        return cls(tuple(sorted((int(b), float(ms)) for b, ms in items)))

    def observed(self, batches: Sequence[tuple[int, float]]) -> Curve:
        """This curve's shape with the times a running fleet actually took, e.g. its own batch
        log lines: each (texts, ms) batch becomes a factor against this curve, and every
        simulated batch draws one (a shared host's contention and its variance, which an idle
        measurement misses; the shape stays the idle curve's, measured at every size)."""
        if not batches:
            raise ValueError("no batches to scale the curve by")
        return Curve(self.points, tuple(float(ms) / self.ms(int(texts)) for texts, ms in batches))

    def draw(self, texts: int, rng: random.Random) -> float:
        """One batch's ms: the curve's, times a measured factor when there are some."""
        base = self.ms(texts)
        return base * rng.choice(self.spread) if self.spread else base

    def ms(self, texts: int) -> float:
        pts = self.points
        if len(pts) == 1:
            return pts[0][1] * texts / pts[0][0] if texts > pts[0][0] else pts[0][1]
        if texts <= pts[0][0]:
            return pts[0][1]
        for (b0, m0), (b1, m1) in itertools.pairwise(pts):
            if texts <= b1:
                return m0 + (m1 - m0) * (texts - b0) / (b1 - b0)
        (b0, m0), (b1, m1) = pts[-2], pts[-1]
        return m1 + (m1 - m0) * (texts - b1) / (b1 - b0)

    def capacity(self, max_batch: int) -> float:
        """Questions per second one worker answers at full batches: the fleet's ceiling per worker."""
        return max_batch / (self.ms(max_batch) / 1000.0)


@dataclass(frozen=True, kw_only=True)
class Fleet:
    """What is simulated: the workers and their batching settings (the workers' defaults)."""

    workers: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 50.0
    policy: str = "adaptive"
    gap_ms: float = 6.0
    overhead_ms: float = 5.0


@dataclass
class Outcome:
    """A simulated run: the latencies (ms) and how busy the workers were."""

    latencies: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    span_s: float = 0.0
    batches: int = 0

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)

    @property
    def utilization(self) -> float:
        return self.busy_s / self.span_s if self.span_s else 0.0

    @property
    def mean_batch(self) -> float:
        return len(self.latencies) / self.batches if self.batches else 0.0


class _Queue:
    """The shared request list: arrival times, revealed to a worker as its clock passes them."""

    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = arrivals
        self.next = 0

    def take(self, now: float, limit: int) -> list[float]:
        out: list[float] = []
        while self.next < len(self.arrivals) and self.arrivals[self.next] <= now and len(out) < limit:
            out.append(self.arrivals[self.next])
            self.next += 1
        return out

    def upcoming(self) -> float | None:
        return self.arrivals[self.next] if self.next < len(self.arrivals) else None


class _SimWorker:
    """One worker on its own simulated clock, batching with the real ``Batcher``."""

    def __init__(self, queue: _Queue, fleet: Fleet) -> None:
        self.now = 0.0
        self.queue = queue
        policy = make_policy(
            fleet.policy, max_batch=fleet.max_batch, max_wait_s=fleet.batch_wait_ms / 1000.0,
            gap_s=fleet.gap_ms / 1000.0,
        )  # fmt: skip
        self.batcher: Batcher[float] = Batcher(
            policy, self, lambda _: 1, clock=lambda: self.now, sleep=self._sleep, poll_s=0.001
        )

    def _sleep(self, seconds: float) -> None:
        self.now += seconds

    def take(self, limit: int, *, block: float) -> list[float]:
        got = self.queue.take(self.now, limit)
        if got or block <= 0:
            return got
        upcoming = self.queue.upcoming()
        if upcoming is None or upcoming > self.now + block:
            self.now += block
            return []
        self.now = upcoming
        return self.queue.take(self.now, limit)


def simulate(curve: Curve, fleet: Fleet, rate: float, *, requests: int = 4000, seed: int = 0) -> Outcome:
    """``requests`` questions at ``rate`` per second (Poisson) through ``fleet``."""
    if rate <= 0 or fleet.workers < 1:
        raise ValueError("rate must be positive and the fleet at least one worker")
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in range(requests):
        t += rng.expovariate(rate)
        arrivals.append(t)
    queue = _Queue(arrivals)
    workers = [_SimWorker(queue, fleet) for _ in range(fleet.workers)]
    draws = random.Random(seed + 1)
    heap = [(0.0, i) for i in range(fleet.workers)]
    out = Outcome()
    answered = 0
    while answered < requests:
        _, i = heapq.heappop(heap)
        w = workers[i]
        batch = w.batcher.next_batch(block=0.5)
        if batch:
            encode_s = curve.draw(len(batch), draws) / 1000.0
            w.now += encode_s
            out.busy_s += encode_s
            out.batches += 1
            out.latencies += [(w.now - arrived) * 1000.0 + fleet.overhead_ms for arrived in batch]
            answered += len(batch)
        heapq.heappush(heap, (w.now, i))
    out.span_s = max(w.now for w in workers) * fleet.workers
    return out


@dataclass(frozen=True)
class PlanRow:
    """One fleet size's prediction."""

    workers: int
    utilization: float
    p50_ms: float
    p95_ms: float
    mean_batch: float
    meets: bool


MAX_BUSY = 0.85
"""A fleet busier than this does not meet a target even when its simulated p95 does: real
arrivals come in bursts the Poisson model smooths over, and a fleet near its ceiling has no room
for a worker restart or a slow neighbour."""


def plan(
    curve: Curve,
    rate: float,
    p95_ms: float,
    fleet: Fleet,
    *,
    max_workers: int = 64,
    requests: int = 4000,
    max_busy: float = MAX_BUSY,
) -> list[PlanRow]:
    """Predictions for 1, 2, ... workers until the p95 target is met (or ``max_workers``). A fleet
    loaded to 98% of its ceiling or more is not simulated: its queue grows without bound, so its
    p95 is reported as infinite and never meets a target."""
    rows = []
    for n in range(1, max_workers + 1):
        load = rate / (curve.capacity(fleet.max_batch) * n)
        if load >= 0.98:
            rows.append(PlanRow(n, load, float("inf"), float("inf"), float(fleet.max_batch), False))
            continue
        sized = Fleet(**{**fleet.__dict__, "workers": n})
        out = simulate(curve, sized, rate, requests=requests)
        meets = out.p(95) <= p95_ms and out.utilization <= max_busy
        row = PlanRow(n, out.utilization, out.p(50), out.p(95), out.mean_batch, meets)
        rows.append(row)
        if row.meets:
            break
    return rows
