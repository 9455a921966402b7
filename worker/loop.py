"""The worker loop: its lifecycle, and one batch sequenced as take -> admit -> encode -> reply.

One process runs one loop and one encode at a time, by design: on a CPU, concurrent encodes
fight for the cores (the design record: 10 at once took 8x longer each). Each step is a module
of its own: ``lane`` (take and the one atomic reply), ``admission`` (deadlines), ``encode``
(token windows, the model call, replies). Nothing a request carries can stop the loop, and
nothing Redis answers can either: a Redis error is logged with its fix, waited out with backoff
and reported (``redis_errors``), never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis

from embedq.clock import RedisClock
from embedq.protocol import Heartbeat

from . import report
from .admission import Admission, CostModel, calibrate
from .batching import Batcher, BatchPolicy, make_policy
from .cache import CacheWriter
from .encode import BatchEncoder
from .encoder import Encoder
from .identity import served_name
from .lane import Depths, NextTake, RedisQueue, Taken
from .liveness import AliveFile
from .metrics import Metrics
from .outcomes import Outcomes
from .presence import Presence
from .reaper import Reaper
from .redis_errors import RedisGuard
from .settings import Settings

log = logging.getLogger("embedq.worker")

IDLE_BLOCK_S = 0.25
"""How long one idle wait for a wake token lasts before the loop looks for a stop (and for
requests pushed without a token)."""
DEPTH_EVERY_S = 1.0
"""How often the queue-depth gauges are read."""


class Worker:
    """Serves one request queue with one encoder until ``stop()`` is called."""

    def __init__(
        self,
        settings: Settings,
        encoder: Encoder,
        client: redis.Redis,
        beat_client: redis.Redis | None = None,
        cache: CacheWriter | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.served_name = served_name(settings.served_name, encoder.name)
        """The name producers ask for this model by."""
        self.redis = client
        self.cache = cache
        keys = settings.keys
        clock, self.depths = RedisClock(), Depths()

        def lane(bulk: bool) -> RedisQueue:
            return RedisQueue(
                client,
                keys,
                settings.worker_id,
                limits=settings.bulk_limits if bulk else settings.limits,
                reply_ttl=settings.reply_ttl,
                dead_max=settings.dead_max,
                bulk=bulk,
                clock=clock,
                depths=self.depths,
            )

        self.queue, self.bulk = lane(False), lane(True)
        self.metrics = Metrics()
        self.alive = AliveFile(settings.alive_file)
        """Touched on every turn of the loop: ``embedq-worker health --live``."""
        if cache is not None:
            cache.on_written = self.metrics.cache_writes.inc
        self.counts = self.metrics.counts
        self.guard = RedisGuard(on_error=self.metrics.redis_error)
        beats = beat_client or client
        self.reaper = Reaper(
            beats,
            keys,
            max_attempts=settings.max_attempts,
            reply_ttl=settings.reply_ttl,
            dead_max=settings.dead_max,
            me=settings.worker_id,
        )
        self.presence = Presence(
            beats,
            keys,
            settings.worker_id,
            ttl=settings.heartbeat_ttl,
            info=self.info,
            reap=self.reaper.reap_once,
            reap_interval=settings.reap_interval,
            guard=RedisGuard(on_error=self.metrics.redis_error),
        )
        self.policy = make_policy(
            settings.batch_policy,
            max_batch=settings.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            gap_s=settings.batch_gap_ms / 1000.0,
        )
        self.cost = CostModel()
        self.admission = Admission(self.metrics)
        self.encoding = BatchEncoder(
            encoder,
            self.metrics,
            self.cost,
            worker_id=settings.worker_id,
            truncate=settings.truncate,
            max_attempts=settings.max_attempts,
            budget_ms=settings.batch_budget_ms,
            cache_kinds=cache.kinds if cache is not None else (),
        )
        self.encoding.between = self._questions_between_slices
        capped = {"cost_of": self._batch_cost, "budget_ms": settings.batch_budget_ms}
        self.batcher: Batcher[Taken] = Batcher(self.policy, self.queue, _texts, **capped)  # type: ignore[arg-type]
        background = BatchPolicy(max_batch=settings.bulk_max_batch, max_wait_s=0.0)  # only what is queued
        self.bulk_batcher: Batcher[Taken] = Batcher(background, self.bulk, _texts, **capped)  # type: ignore[arg-type]
        self._online_streak = 0
        """Online batches served since the last background one."""
        self._slicing = False
        self._stopping = False
        self._next_depth = 0.0

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (safe from a signal handler)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stopping

    def warm_up(self) -> None:
        """Encodes before serving, so the first real request does not pay for lazy setup, timed
        to calibrate the cost model (``admission.calibrate``)."""
        self.encoder.encode(["warm-up"], ["query"])
        calibrate(self.cost, self.encoder, self.settings.max_batch, self.settings.batch_budget_ms)

    def describe(self) -> str:
        """The start-up line: everything that decides what vectors and latency a user gets."""
        return report.start_line(self.settings, self.encoder, self.cache, self.served_name)

    def info(self) -> Heartbeat:
        """What the heartbeat tells operators about this worker (the presence thread adds where
        and when)."""
        cache = None
        if self.cache is not None:
            cache = self.cache.stats()
            self.metrics.cache(cache)
        return report.heartbeat(
            self.settings,
            self.encoder,
            served_name=self.served_name,
            batches=self.encoding.batches,
            counts=dict(self.counts),
            last_minute=self.metrics.last_minute(),
            cache=cache,
            redis_trouble=self.guard.report(),
        )

    def run(self) -> None:
        """Serve until stopped; waits out Redis outages and refusals with capped backoff."""
        log.info(self.describe())  # before the first heartbeat: who sees it live can read this line
        self._until_ok(self._start, "starting")
        self.presence.start()
        while not self._stopping:
            self.alive.touch()
            try:
                self.tick()
                self.guard.recovered()
            except Exception as exc:
                self._recover_from(exc)
        self.presence.stop()
        if self.cache is not None:
            self.cache.close()
        self._until_ok(self._leave, "leaving", attempts=3)
        log.info("worker %s stopped: %s", self.settings.worker_id, dict(self.counts))

    def tick(self) -> None:
        """One turn of the loop: a batch (or an idle wait); the depth gauges now and then."""
        self.serve_once()
        now = time.monotonic()
        if now >= self._next_depth:
            self._next_depth = now + DEPTH_EVERY_S
            self.metrics.depth.labels("online").set(self.queue.depth())
            self.metrics.depth.labels("bulk").set(self.bulk.depth())

    def _start(self) -> None:
        """Put back what an earlier run of this worker id left, and beat once."""
        moved = self.queue.recover() + self.bulk.recover()
        if moved:
            log.warning(
                "put %d request(s) left by an earlier run of %s back on the queue",
                moved,
                self.settings.worker_id,
            )
        try:  # the heartbeat thread keeps trying: a stray key must not stop the serving
            self.presence.beat()
            self.presence.check_policy()
        except redis.exceptions.ResponseError as exc:
            self.presence.guard.failed(exc, "writing the first heartbeat")
        self.metrics.describe(report.info_labels(self.info()))

    def _leave(self) -> None:
        held = self.batcher.drain()
        self.queue.put_back(held)
        background = self.bulk_batcher.drain()
        self.bulk.put_back(background)
        if held or background:
            log.info("put %d request(s) not yet started back on the queue", len(held) + len(background))
        self.encoding.tokens.clear()
        self.presence.leave()

    def _recover_from(self, exc: Exception) -> None:
        """After an error in the loop: what the batcher held is still in this worker's processing
        list, so forget it, wait, and put the list back on the queue once Redis lets us."""
        if not isinstance(exc, redis.exceptions.RedisError):
            log.exception("unexpected error in the worker loop; carrying on")
        time.sleep(self.guard.failed(exc, "serving"))
        self.batcher.drain()
        self.bulk_batcher.drain()
        self.encoding.tokens.clear()
        self._until_ok(self._start, "recovering")

    def _until_ok(self, step: Callable[[], object], what: str, attempts: int = 0) -> bool:
        """Run ``step`` until it succeeds (or ``attempts`` tries, or a stop while retrying)."""
        tries = 0
        while True:
            self.alive.touch()  # waiting out Redis is the loop turning, not a stuck one
            try:
                step()
                self.guard.recovered()
                return True
            except Exception as exc:
                tries += 1
                delay = self.guard.failed(exc, what)
                if (attempts and tries >= attempts) or (self._stopping and what != "leaving"):
                    return False
                time.sleep(delay)

    # --- one batch ------------------------------------------------------------------------

    def serve_once(self, block: float = IDLE_BLOCK_S) -> int:
        """Answer one batch; returns the number of requests handled (0 when idle).

        Questions go first: the online lane is served whenever it has requests, except that
        after ``bulk_every`` online batches in a row the background lane (bulk jobs, documents,
        multi-request calls) gets one batch if it has work, so it finishes even while questions
        never stop. Every batch is capped by its expected cost (``batch_budget_ms``), so a
        question waits behind at most one capped batch. With nothing queued, wait for a wake
        token (every producer leaves one). A take that the last script's look at both lanes
        (``Depths``, a moment ago) says would find nothing is skipped.
        """
        online, bulk = self.depths.consume()
        background = bulk != 0 or bool(self.bulk_batcher.pending)  # may have work
        if self._online_streak >= self.settings.bulk_every:
            if background and (served := self._serve_background()):
                return served
            self._online_streak, background = 0, False  # just looked, or knew
        if online != 0 or self.batcher.pending:
            batch = self.batcher.next_batch(block=0, drained=online == 0)
            if batch:
                self._online_streak += 1
                self.process(batch)
                return len(batch)
        if background and (served := self._serve_background()):
            return served
        batch = self.batcher.next_batch(block=block)
        if batch:
            self._online_streak += 1
            self.process(batch)
        return len(batch)

    def _serve_background(self) -> int:
        """One background batch, if the lane has work (its request count); resets the online
        streak either way."""
        self._online_streak = 0
        batch = self.bulk_batcher.next_batch(block=0)
        if batch:
            self.process(batch, self.bulk)
        return len(batch)

    def _questions_between_slices(self) -> None:
        """Between the slices of a batch over the budget: answer the questions waiting (one
        batch), so none waits for the whole of a long batch."""
        if self._slicing:
            return
        self._slicing = True
        try:
            batch = self.batcher.next_batch(block=0)
            if batch:
                self.process(batch)
        finally:
            self._slicing = False

    def _batch_cost(self, items: Sequence[Taken]) -> float:
        """Expected encode ms of ``items`` as one batch."""
        return self.cost.expected_ms(*self.encoding.tokens.padded(items))

    def process(self, batch: Sequence[Taken], lane: RedisQueue | None = None) -> None:
        """Answer every request of a batch taken from ``lane`` (default: online): errors for
        refused ones, vectors for the rest, all written in one atomic step."""
        lane = lane or self.queue
        began = time.perf_counter()
        out = Outcomes(self.settings.worker_id, model=self.served_name, fingerprint=self.encoder.fingerprint)
        live = self.admission.parsed(batch, lane.lane, out)
        live = self.admission.for_this_model(live, out, self.served_name, self.encoder)
        planned_ms = self.cost.cautious_ms(*self.encoding.tokens.padded(live))
        live = self.admission.admit(live, lane.now_ms(), lane.lane, out, encode_ms=planned_ms)
        rows = self.encoding.check_windows(live, out)
        encode_ms = self.encoding.encode_and_reply(rows, lane, out) if rows.entries else 0.0
        started = time.perf_counter()
        self._finish(batch, lane, out)
        self.encoding.tokens.forget(batch)
        if rows.entries:
            self.cost.add_rest((time.perf_counter() - began) * 1000 - encode_ms)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                report.BATCH_LOG,
                self.encoding.batches,
                lane.lane,
                len(batch),
                len(rows),
                self.batcher.last_wait_s * 1000,
                encode_ms,
                (time.perf_counter() - started) * 1000,
            )

    def _finish(self, batch: Sequence[Taken], lane: RedisQueue, out: Outcomes) -> None:
        """Write the batch's outcomes and take the next online batch in the same round trip,
        then feed the cache and count what happened."""
        failed, taken = lane.finish(batch, out, self._next_take())
        self.batcher.offer(taken)
        undeliverable = set(failed)
        if self.cache is not None and out.cacheable:
            self.cache.store(out.cacheable)  # handed to its thread: the batch never waits on the cache
        now_ms = lane.now_ms()
        for i, outcome in enumerate(out.counts):
            if i in undeliverable:
                outcome = "dead"
            elif outcome == "ok" and now_ms > out.deadlines[i]:
                vectors = out.replies[i].vectors
                self.metrics.late(0 if vectors is None else len(vectors), lane.lane)
            self.metrics.outcome(outcome, lane.lane)
        if undeliverable:
            log.warning(
                "%d reply key(s) held another type: those requests were dead-lettered", len(undeliverable)
            )

    def _next_take(self) -> NextTake | None:
        """What the finish script takes for the next online batch: a first take's worth while
        nothing is carried over (none once stopping); none if the background lane's turn is
        next and it has work."""
        if self._stopping or self.batcher.pending:
            return None
        due = self._online_streak >= self.settings.bulk_every
        return NextTake(self.policy.max_batch, self.settings.limits, unless_bulk=due)


def _texts(item: Taken) -> int:
    """Texts an item adds to a batch."""
    return item.size
