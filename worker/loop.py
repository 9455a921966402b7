"""The worker loop: gather a batch, refuse what is invalid, encode the rest once, answer each.

One process runs one loop and one encode at a time, by design: on a CPU, concurrent encodes
fight for the cores (the design record: 10 at once took 8x longer each). Nothing a request
carries can stop the loop, and nothing Redis answers can either: a batch whose encode fails is
retried text by text so only the bad text's request gets an error, and a Redis error is logged
with its fix, waited out with backoff and reported (``redis_errors``), never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from embedq.protocol import Heartbeat, Reply, Request

from .batching import Batcher, make_policy
from .cache import Cacheable, CacheWriter
from .encoder import Encoder, fingerprint_of
from .lane import DeadLetter, RedisQueue, Taken
from .metrics import Metrics
from .presence import Presence
from .reaper import Reaper
from .redis_errors import RedisGuard
from .settings import Settings

log = logging.getLogger("embedq.worker")

IDLE_BLOCK_S = 0.25
"""How long one idle wait for a wake token lasts before the loop looks for a stop (and for
requests pushed without a token)."""
INFO_METRIC_FIELDS = (
    "model", "backend", "dim", "device", "threads", "max_batch", "bulk_max_batch",
    "batch_policy", "batch_wait_ms", "queue", "max_tokens", "truncate",
)  # fmt: skip
"""What ``embedq_worker_info`` reports of ``Worker.info()``."""
DEPTH_EVERY_S = 1.0
"""How often the queue-depth gauges are read."""
SKIP_LOG_EVERY_S = 10.0
"""Skipped (past-deadline) requests are logged at most this often, as a count."""
EWMA_ALPHA = 0.2


@dataclass
class EncodeEstimate:
    """How long an encode of n texts is expected to take: a moving average per batch size,
    first measured at warm-up (1 text and a full batch, with the sizes between interpolated).
    Per size, not per text: a batch of 8 costs far less than 8 batches of 1, and an estimate that
    assumed otherwise would refuse requests that could be answered in time."""

    by_size: dict[int, float] = field(default_factory=dict)

    def calibrate(self, one_ms: float, full_ms: float, full: int) -> None:
        """Set the estimate from a measured encode of 1 text and of ``full`` texts."""
        for n in range(1, full + 1):
            self.by_size[n] = one_ms + (full_ms - one_ms) * (n - 1) / max(1, full - 1)

    def add(self, texts: int, ms: float) -> None:
        """One encode of ``texts`` texts took ``ms``."""
        if texts <= 0:
            return
        old = self.by_size.get(texts)
        self.by_size[texts] = ms if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * ms

    def expected_ms(self, texts: int) -> float:
        """Expected encode time of ``texts`` texts (0 before anything was measured)."""
        if texts in self.by_size:
            return self.by_size[texts]
        if not self.by_size:
            return 0.0
        largest = max(self.by_size)
        return self.by_size[largest] * texts / largest


@dataclass
class Outcomes:
    """What a batch does, gathered before the one atomic write."""

    replies: list[Reply] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    retry: list[Taken] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    """One outcome per reply, in ``replies`` order (``ok``, ``error``...)."""
    deadlines: list[int] = field(default_factory=list)
    """Each reply's request deadline (Redis ms), in ``replies`` order."""
    cacheable: list[Cacheable] = field(default_factory=list)
    """Texts answered whole (not cut), for the query cache once the replies are out."""

    def reply(self, reply: Reply, outcome: str, deadline_ms: int = 0) -> None:
        self.replies.append(reply)
        self.counts.append(outcome)
        self.deadlines.append(deadline_ms)


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
        self.redis = client
        self.cache = cache
        keys = settings.keys

        def lane(bulk: bool) -> RedisQueue:
            return RedisQueue(
                client,
                keys,
                settings.worker_id,
                limits=settings.bulk_limits if bulk else settings.limits,
                reply_ttl=settings.reply_ttl,
                dead_max=settings.dead_max,
                bulk=bulk,
            )

        self.queue, self.bulk = lane(False), lane(True)
        self.metrics = Metrics()
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
        self.batcher: Batcher[Taken] = Batcher(self.policy, self.queue, lambda t: t.size)
        self.estimate = EncodeEstimate()
        self.batches = 0
        self._stopping = False
        self._next_depth = 0.0
        self._skipped_since_log = 0
        self._next_skip_log = 0.0

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (safe from a signal handler)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stopping

    def warm_up(self) -> None:
        """Encodes before serving, so the first real request does not pay for lazy setup; a
        lone text and a full batch, timed, give the first encode-time estimate."""
        self.encoder.encode(["warm-up"], ["query"])
        timed = []
        for n in (1, self.settings.max_batch):
            started = time.perf_counter()
            self.encoder.encode([f"warm-up text {i}" for i in range(n)], ["query"] * n)
            timed.append((time.perf_counter() - started) * 1000.0)
        self.estimate.calibrate(timed[0], timed[1], self.settings.max_batch)

    def describe(self) -> str:
        """The start-up line: everything that decides what vectors and latency a user gets."""
        s, e = self.settings, self.encoder
        source = getattr(e, "prefix_source", "encoder")
        return (
            f"worker {s.worker_id} ready: model={e.name} backend={getattr(e, 'backend', s.backend)} "
            f"dim={e.dim} max_tokens={e.max_tokens} "
            f"truncate={s.truncate} device={s.device} "
            f"threads={s.threads} max_batch={s.max_batch} bulk_max_batch={s.bulk_max_batch} "
            f"batch_policy={s.batch_policy} "
            f"batch_wait_ms={s.batch_wait_ms:g} batch_gap_ms={s.batch_gap_ms:g} "
            f"max_request_bytes={s.limits.byte_cap} "
            f"prefixes: query={e.prefixes['query']!r} passage={e.prefixes['passage']!r} "
            f"({source}) queue={s.queue!r} fingerprint={fingerprint_of(e) or '-'} "
            f"cache={','.join(self.cache.kinds) + f' ttl={s.cache_ttl}s' if self.cache else 'off'}"
        )

    def info(self) -> Heartbeat:
        """What the heartbeat tells operators about this worker (the presence thread adds where
        and when)."""
        s, e = self.settings, self.encoder
        return Heartbeat(
            worker=s.worker_id,
            model=e.name,
            backend=getattr(e, "backend", s.backend),
            dim=e.dim,
            prefixes=dict(e.prefixes),
            normalized=True,
            queue=s.queue,
            settings={
                "device": s.device,
                "threads": s.threads,
                "max_batch": s.max_batch,
                "bulk_max_batch": s.bulk_max_batch,
                "batch_policy": s.batch_policy,
                "batch_wait_ms": s.batch_wait_ms,
                "max_tokens": e.max_tokens,
                "truncate": s.truncate,
            },
            batches=self.batches,
            counts=dict(self.counts),
            last_minute=self.metrics.last_minute(),
            fingerprint=fingerprint_of(e),
            cache=self._cache_stats(),
            redis_trouble=self.guard.report(),
        )

    def _cache_stats(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        stats = self.cache.stats()
        self.metrics.cache(stats)
        return stats

    def run(self) -> None:
        """Serve until stopped; waits out Redis outages and refusals with capped backoff."""
        self._until_ok(self._start, "starting")
        self.presence.start()
        log.info(self.describe())
        while not self._stopping:
            try:
                self.tick()
                self.guard.recovered()
            except Exception as exc:
                self._recover_from(exc)
        self.presence.stop()
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
        info = self.info()
        flat = {
            "model": info.model,
            "backend": info.backend,
            "dim": info.dim,
            "queue": info.queue,
            **info.settings,
        }
        self.metrics.describe({k: flat[k] for k in INFO_METRIC_FIELDS})

    def _leave(self) -> None:
        held = self.batcher.drain()
        self.queue.put_back(held)
        if held:
            log.info("put %d request(s) not yet started back on the queue", len(held))
        self.presence.leave()

    def _recover_from(self, exc: Exception) -> None:
        """After an error in the loop: what the batcher held is still in this worker's processing
        list, so forget it, wait, and put the list back on the queue once Redis lets us."""
        if not isinstance(exc, redis.exceptions.RedisError):
            log.exception("unexpected error in the worker loop; carrying on")
        time.sleep(self.guard.failed(exc, "serving"))
        self.batcher.drain()
        self._until_ok(self._start, "recovering")

    def _until_ok(self, step: Callable[[], object], what: str, attempts: int = 0) -> bool:
        """Run ``step`` until it succeeds (or ``attempts`` tries, or a stop while retrying)."""
        tries = 0
        while True:
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

        Online requests always go first: a bulk request is taken only when none is queued, one
        per batch, so an online request waits behind at most one bulk batch. With nothing
        queued, wait for a wake token (both kinds of producer leave one).
        """
        batch = self.batcher.next_batch(block=0)
        if batch:
            self.process(batch)
            return len(batch)
        bulk = self.bulk.take(1, block=0)
        if bulk:
            self.process(bulk, self.bulk)
            return len(bulk)
        batch = self.batcher.next_batch(block=block)
        if batch:
            self.process(batch)
        return len(batch)

    def process(self, batch: Sequence[Taken], lane: RedisQueue | None = None) -> None:
        """Answer every request of a batch taken from ``lane`` (default: online): errors for
        refused ones, vectors for the rest; a request whose text failed to encode goes back to
        its list until its attempts run out. Requests that cannot be answered before their
        deadline (given this batch's expected encode time) are skipped and counted."""
        lane = lane or self.queue
        name = lane.lane
        out = Outcomes()
        worker_id = self.settings.worker_id
        live: list[Taken] = []
        for item in batch:
            if item.rejected is not None:
                rej = item.rejected
                log.warning("refused a request (%s): %s", rej.code, rej.message)
                if rej.request_id is None:
                    self.metrics.outcome("dead", name)
                    out.dead.append(DeadLetter(rej.message, rej.code, item.raw, worker_id))
                else:
                    out.reply(self._error(rej.request_id, rej.code, rej.message), "error")
            else:
                live.append(item)
        live = self._drop_late(live, lane, out)
        live, truncated, tokens = self._check_windows(live, out)
        encode_ms = self._encode_and_reply(live, name, out, truncated, tokens) if live else 0.0
        started = time.perf_counter()
        undeliverable = set(lane.finish(batch, out.replies, out.dead, out.retry))
        if self.cache is not None and out.cacheable:
            self.metrics.cache_writes.inc(self.cache.store(out.cacheable))
        now_ms = lane.now_ms()
        for i, outcome in enumerate(out.counts):
            if i in undeliverable:
                outcome = "dead"
            elif outcome == "ok" and now_ms > out.deadlines[i]:
                vectors = out.replies[i].vectors
                self.metrics.late(0 if vectors is None else len(vectors), name)
            self.metrics.outcome(outcome, name)
        if undeliverable:
            log.warning(
                "%d reply key(s) held another type: those requests were dead-lettered", len(undeliverable)
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch %d (%s): %d request(s), %d text(s); waited %.1f ms, encode %.1f ms, reply %.1f ms",
                self.batches,
                name,
                len(batch),
                sum(t.size for t in live),
                self.batcher.last_wait_s * 1000,
                encode_ms,
                (time.perf_counter() - started) * 1000,
            )

    def _drop_late(self, live: list[Taken], lane: RedisQueue, out: Outcomes) -> list[Taken]:
        """Requests that can still be answered in time; the others are skipped unencoded: past
        their deadline (their producer has gone: no reply), or unable to meet it given this
        batch's expected encode time (a ``deadline_exceeded`` error, so the producer hears why)."""
        now_ms = lane.now_ms()
        texts = sum(t.size for t in live)
        finish_ms = now_ms + self.estimate.expected_ms(texts)
        keep: list[Taken] = []
        skipped = 0
        for item in live:
            request = item.request
            assert request is not None
            if request.deadline_ms <= now_ms:
                self.metrics.outcome("expired", lane.lane)
                skipped += 1
            elif request.deadline_ms < finish_ms:
                waited = now_ms - request.sent_ms
                out.reply(
                    self._error(
                        request.id,
                        "deadline_exceeded",
                        f"it waited {waited} ms in the queue and the next encode takes about "
                        f"{self.estimate.expected_ms(texts):.0f} ms, past its deadline: the workers "
                        "are behind (add workers, or raise the producer's timeout)",
                    ),
                    "late",
                )
                skipped += 1
            else:
                keep.append(item)
        if skipped:
            self._note_skipped(skipped)
        return keep

    def _note_skipped(self, n: int) -> None:
        self._skipped_since_log += n
        now = time.monotonic()
        if now >= self._next_skip_log:
            log.warning(
                "skipped %d request(s) unencoded that could not be answered before their deadline "
                "(measured on the Redis clock): the workers are behind",
                self._skipped_since_log,
            )
            self._skipped_since_log = 0
            self._next_skip_log = now + SKIP_LOG_EVERY_S

    def _check_windows(
        self, live: list[Taken], out: Outcomes
    ) -> tuple[list[Taken], dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """Count tokens: the requests to encode, and per request id the indexes of its texts the
        model will cut. A request with a text over the model's window is refused if it asked not
        to be cut (``truncate: false``, or the worker's ``EMBED_TRUNCATE=false``)."""
        window = self.encoder.max_tokens
        cut_map: dict[str, tuple[int, ...]] = {}
        token_map: dict[str, tuple[int, ...]] = {}
        if not window or not live:
            return live, cut_map, token_map
        texts, kinds = self._flatten(live)
        counts = self.encoder.token_counts(texts, kinds)
        keep: list[Taken] = []
        row = 0
        for item in live:
            request = item.request
            assert request is not None
            mine = counts[row : row + len(request.texts)]
            row += len(request.texts)
            over = tuple(i for i, n in enumerate(mine) if n > window)
            cut = self.settings.truncate if request.truncate is None else request.truncate
            if over and not cut:
                i = over[0]
                out.reply(
                    self._error(
                        request.id,
                        "text_too_long",
                        f"text {i} is {mine[i]} tokens; the model's window is {window} tokens and this "
                        "request asked not to cut it (truncate=false): split the text",
                    ),
                    "error",
                )
                continue
            if over:
                cut_map[request.id] = over
                self.metrics.truncated(len(over))
            token_map[request.id] = tuple(min(n, window) for n in mine)
            keep.append(item)
        return keep, cut_map, token_map

    @staticmethod
    def _flatten(live: Sequence[Taken]) -> tuple[list[str], list[str]]:
        texts: list[str] = []
        kinds: list[str] = []
        for item in live:
            assert item.request is not None
            texts.extend(item.request.texts)
            kinds.extend([item.request.kind] * len(item.request.texts))
        return texts, kinds

    def _encode_and_reply(
        self,
        live: Sequence[Taken],
        lane: str,
        out: Outcomes,
        truncated: dict[str, tuple[int, ...]],
        tokens: dict[str, tuple[int, ...]],
    ) -> float:
        """Encode the texts of ``live`` in one call and add their replies to ``out``; requests
        whose text failed go to ``out.retry`` or, out of attempts, get an error. Returns the
        encode time in ms."""
        texts, kinds = self._flatten(live)
        started = time.perf_counter()
        vectors, failures = self._encode(texts, kinds)
        encode_ms = (time.perf_counter() - started) * 1000.0
        self.batches += 1
        self.metrics.batch(len(texts), encode_ms / 1000.0, lane)
        if not failures:
            self.estimate.add(len(texts), encode_ms)

        failed: list[tuple[Taken, Request, str]] = []
        row = 0
        for item in live:
            request = item.request
            assert request is not None
            rows = range(row, row + len(request.texts))
            row = rows.stop
            bad = [i for i in rows if i in failures]
            if bad:
                failed.append(
                    (item, request, f"text {bad[0] - rows.start} could not be encoded: {failures[bad[0]]}")
                )
                continue
            queue_ms = max(0.0, float(item.taken_ms - request.sent_ms))
            self.metrics.answered(queue_ms, encode_ms, lane)
            reply = Reply(
                id=request.id,
                vectors=vectors[rows.start : rows.stop],
                queue_ms=queue_ms,
                encode_ms=encode_ms,
                batch_size=len(texts),
                worker=self.settings.worker_id,
                truncated=truncated.get(request.id, ()),
                tokens=tokens.get(request.id, ()),
                digest=request.digest,
            )
            out.reply(reply, "ok", request.deadline_ms)
            if self.cache is not None and request.kind in self.cache.kinds:
                cut = set(reply.truncated)
                counts = reply.tokens or (0,) * len(request.texts)
                out.cacheable.extend(
                    Cacheable(request.kind, text, vectors[rows.start + i], counts[i])
                    for i, text in enumerate(request.texts)
                    if i not in cut
                )
        if failed:
            totals = self.queue.count_attempts([request.id for _, request, _ in failed])
            for (item, request, why), attempts in zip(failed, totals, strict=True):
                if attempts < self.settings.max_attempts:
                    self.metrics.outcome("retried", lane)
                    out.retry.append(item)
                    continue
                message = f"{why} (gave up after {attempts} attempts)"
                out.reply(self._error(request.id, "encode_failed", message), "dead")
                out.dead.append(
                    DeadLetter(message, "encode_failed", item.raw, self.settings.worker_id, request.id)
                )
        return encode_ms

    def _encode(self, texts: list[str], kinds: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Encode a batch; if that fails, each text alone, so only bad texts fail."""
        out = np.zeros((len(texts), self.encoder.dim), np.float32)
        try:
            return self._checked(texts, kinds), {}
        except Exception as exc:
            if len(texts) == 1:
                log.warning("encode failed: %s: %s", type(exc).__name__, exc)
                return out, {0: f"{type(exc).__name__}: {exc}"}
            log.warning("encode of %d texts failed (%s); retrying text by text", len(texts), exc)
        failures: dict[int, str] = {}
        for i, (text, kind) in enumerate(zip(texts, kinds, strict=True)):
            try:
                out[i] = self._checked([text], [kind])[0]
            except Exception as exc:
                failures[i] = f"{type(exc).__name__}: {exc}"
        return out, failures

    def _checked(self, texts: list[str], kinds: list[str]) -> np.ndarray:
        """The encoder's vectors, each distinct (kind, text) encoded once (a chatbot's batch often
        holds the same question twice), checked for shape and finiteness."""
        first: dict[tuple[str, str], int] = {}
        rows = [first.setdefault(pair, len(first)) for pair in zip(kinds, texts, strict=True)]
        unique = list(first)
        vectors = np.asarray(
            self.encoder.encode([t for _, t in unique], [k for k, _ in unique]), dtype=np.float32
        )
        if vectors.shape != (len(unique), self.encoder.dim):
            raise ValueError(f"encoder returned shape {vectors.shape} for {len(unique)} texts")
        if not np.isfinite(vectors).all():
            raise ValueError("encoder returned non-finite values")
        return vectors if len(unique) == len(texts) else vectors[rows]

    def _error(self, request_id: str, code: str, message: str) -> Reply:
        return Reply(id=request_id, code=code, message=message, worker=self.settings.worker_id)
