"""The worker loop: gather a batch, refuse what is invalid, encode the rest once, answer each.

One process runs one loop and one encode at a time, by design: on a CPU, concurrent encodes
fight for the cores (the design record: 10 at once took 8x longer each). Nothing a request
carries can stop the loop; a batch whose encode fails is retried text by text so only the bad
text's request gets an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import redis

from embedq.protocol import Reply

from .batching import Batcher, make_policy
from .encoder import Encoder
from .metrics import Metrics
from .presence import Presence
from .reaper import Reaper
from .redis_queue import DeadLetter, RedisQueue, Taken
from .settings import Settings

log = logging.getLogger("embedq.worker")

IDLE_BLOCK_S = 0.25
"""How long one blocking take waits for a first online request before the loop looks at the
bulk list again (a bulk request cannot wake it) and checks for a stop."""
BULK_LINGER_S = 0.5
"""After a bulk batch, poll both lists this long instead of blocking on the online one (which
a bulk request would not wake): a bulk job's next request is usually milliseconds away."""
BULK_POLL_S = 0.002
INFO_METRIC_FIELDS = (
    "model", "dim", "device", "threads", "max_batch", "bulk_max_batch",
    "batch_policy", "batch_wait_ms", "queue",
)  # fmt: skip
"""What ``embedq_worker_info`` reports of ``Worker.info()``."""
BACKOFF_MAX_S = 2.0
"""Cap of the wait between reconnection attempts while Redis is unreachable."""


class Worker:
    """Serves one request queue with one encoder until ``stop()`` is called."""

    def __init__(self, settings: Settings, encoder: Encoder, client: redis.Redis) -> None:
        self.settings = settings
        self.encoder = encoder
        self.redis = client
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
        self.presence = Presence(client, keys, settings.worker_id, ttl=settings.heartbeat_ttl)
        self.reaper = Reaper(
            client,
            keys,
            max_attempts=settings.max_attempts,
            reply_ttl=settings.reply_ttl,
            dead_max=settings.dead_max,
            me=settings.worker_id,
        )
        self.policy = make_policy(
            settings.batch_policy,
            max_batch=settings.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            gap_s=settings.batch_gap_ms / 1000.0,
        )
        self.batcher: Batcher[Taken] = Batcher(self.policy, self.queue, lambda t: t.size)
        self.metrics = Metrics()
        self.counts = self.metrics.counts
        self.batches = 0
        self._stopping = False
        self._next_reap = 0.0
        self._bulk_seen = -BULK_LINGER_S

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (safe from a signal handler)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stopping

    def warm_up(self) -> None:
        """One encode before serving, so the first real request does not pay for lazy setup."""
        self.encoder.encode(["warm-up"], ["query"])

    def describe(self) -> str:
        """The start-up line: everything that decides what vectors and latency a user gets."""
        s, e = self.settings, self.encoder
        source = getattr(e, "prefix_source", "encoder")
        return (
            f"worker {s.worker_id} ready: model={e.name} dim={e.dim} device={s.device} "
            f"threads={s.threads} max_batch={s.max_batch} bulk_max_batch={s.bulk_max_batch} "
            f"batch_policy={s.batch_policy} "
            f"batch_wait_ms={s.batch_wait_ms:g} batch_gap_ms={s.batch_gap_ms:g} "
            f"prefixes: query={e.prefixes['query']!r} passage={e.prefixes['passage']!r} "
            f"({source}) queue={s.queue!r}"
        )

    def info(self) -> dict[str, object]:
        """What the heartbeat tells operators about this worker."""
        s, e = self.settings, self.encoder
        return {
            "model": e.name,
            "dim": e.dim,
            "device": s.device,
            "threads": s.threads,
            "max_batch": s.max_batch,
            "bulk_max_batch": s.bulk_max_batch,
            "batch_wait_ms": s.batch_wait_ms,
            "batch_policy": s.batch_policy,
            "queue": s.queue,
            "prefixes": dict(e.prefixes),
            "normalized": True,
            "batches": self.batches,
            "counts": dict(self.counts),
            "last_minute": self.metrics.last_minute(),
        }

    def run(self) -> None:
        """Serve until stopped; survives Redis outages by reconnecting with capped backoff."""
        self._call_redis(self._start)
        log.info(self.describe())
        while not self._stopping:
            if not self._call_redis(self.tick):
                self.batcher.drain()  # what it held is back on the queue (recovered on reconnect)
        self._call_redis(self._leave)
        log.info("worker %s stopped: %s", self.settings.worker_id, dict(self.counts))

    def tick(self) -> None:
        """One turn of the loop: a batch (or an idle wait), the heartbeat, a reaper pass if due."""
        self.serve_once()
        if self.presence.due():
            self.presence.beat(self.info())
            self.metrics.depth.labels("online").set(self.queue.depth())
            self.metrics.depth.labels("bulk").set(self.bulk.depth())
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + self.settings.reap_interval
            self.reaper.reap_once()

    def _start(self) -> None:
        moved = self.queue.recover() + self.bulk.recover()
        if moved:
            log.warning(
                "put %d request(s) left by an earlier run of %s back on the queue",
                moved,
                self.settings.worker_id,
            )
        self.presence.beat(self.info())
        info = self.info()
        self.metrics.describe({k: info[k] for k in INFO_METRIC_FIELDS})

    def _leave(self) -> None:
        held = self.batcher.drain()
        self.queue.put_back(held)
        if held:
            log.info("put %d request(s) not yet started back on the queue", len(held))
        self.presence.leave()

    def _call_redis(self, fn: Callable[[], object]) -> bool:
        """Run ``fn``; on a Redis connection error wait with capped backoff until Redis answers
        again (logging the outage once, not each attempt), take back what this worker held, and
        return False."""
        try:
            fn()
            return True
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.error("lost Redis (%s); reconnecting", exc)
        delay = 0.05
        down_since = time.monotonic()
        while True:
            time.sleep(delay)
            try:
                self._start()
                log.info("Redis is back after %.1f s; serving again", time.monotonic() - down_since)
                return False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if self._stopping:
                    return False
                delay = min(delay * 2, BACKOFF_MAX_S)

    # --- one batch ------------------------------------------------------------------------

    def serve_once(self, block: float = IDLE_BLOCK_S) -> int:
        """Answer one batch; returns the number of requests handled (0 when idle).

        Online requests always go first: a bulk request is taken only when none is queued, one
        per batch, so an online request waits behind at most one bulk batch. With nothing
        queued, block on the online list (or, right after bulk work, poll both briefly).
        """
        batch = self.batcher.next_batch(block=0)
        if batch:
            self.process(batch)
            return len(batch)
        bulk = self.bulk.take(1, block=0)
        if bulk:
            self._bulk_seen = time.monotonic()
            self.process(bulk, self.bulk)
            return len(bulk)
        if time.monotonic() - self._bulk_seen < BULK_LINGER_S:
            time.sleep(BULK_POLL_S)
            return 0
        batch = self.batcher.next_batch(block=block)
        if batch:
            self.process(batch)
        return len(batch)

    def process(self, batch: Sequence[Taken], lane: RedisQueue | None = None) -> None:
        """Answer every request of a batch taken from ``lane`` (default: online): errors for
        refused ones, vectors for the rest; a request whose text failed to encode goes back to
        its list until its attempts run out."""
        lane = lane or self.queue
        name = lane.lane
        now = time.time()
        replies: list[Reply] = []
        dead: list[DeadLetter] = []
        retry: list[Taken] = []
        live: list[Taken] = []
        worker_id = self.settings.worker_id
        for item in batch:
            if item.rejected is not None:
                rej = item.rejected
                log.warning("refused a request (%s): %s", rej.code, rej.message)
                if rej.request_id is None:
                    self.metrics.outcome("dead", name)
                    dead.append(DeadLetter(rej.message, rej.code, item.raw, worker_id))
                else:
                    self.metrics.outcome("error", name)
                    replies.append(self._error(rej.request_id, rej.code, rej.message))
            elif item.request is not None and item.request.deadline < now:
                self.metrics.outcome("expired", name)  # its producer stopped waiting: skip the encode
            else:
                live.append(item)
        encode_ms = 0.0
        if live:
            encoded, failed, encode_ms = self._encode_and_reply(live, name)
            replies.extend(encoded)
            if failed:
                totals = lane.count_attempts([t.request.id for t, _ in failed if t.request])
                for (item, why), attempts in zip(failed, totals, strict=True):
                    assert item.request is not None
                    if attempts < self.settings.max_attempts:
                        self.metrics.outcome("retried", name)
                        retry.append(item)
                        continue
                    message = f"{why} (gave up after {attempts} attempts)"
                    self.metrics.outcome("dead", name)
                    replies.append(self._error(item.request.id, "encode_failed", message))
                    dead.append(DeadLetter(message, "encode_failed", item.raw, worker_id, item.request.id))
        started = time.perf_counter()
        lane.finish(batch, replies, dead, retry)
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

    def _encode_and_reply(
        self, live: Sequence[Taken], lane: str
    ) -> tuple[list[Reply], list[tuple[Taken, str]], float]:
        """Encode the texts of ``live`` in one call: the replies of those that worked, the
        requests that failed with why, and the encode time in ms."""
        texts: list[str] = []
        kinds: list[str] = []
        for item in live:
            assert item.request is not None
            texts.extend(item.request.texts)
            kinds.extend([item.request.kind] * len(item.request.texts))
        started = time.perf_counter()
        vectors, failures = self._encode(texts, kinds)
        encode_ms = (time.perf_counter() - started) * 1000.0
        self.batches += 1
        self.metrics.batch(len(texts), encode_ms / 1000.0, lane)

        replies: list[Reply] = []
        failed: list[tuple[Taken, str]] = []
        row = 0
        for item in live:
            request = item.request
            assert request is not None
            rows = range(row, row + len(request.texts))
            row = rows.stop
            bad = [i for i in rows if i in failures]
            if bad:
                failed.append((item, f"text {bad[0] - rows.start} could not be encoded: {failures[bad[0]]}"))
                continue
            queue_ms = max(0.0, (item.taken_at - request.sent_at) * 1000.0)
            self.metrics.outcome("ok", lane)
            self.metrics.answered(queue_ms, encode_ms, lane)
            replies.append(
                Reply(
                    id=request.id,
                    vectors=vectors[rows.start : rows.stop],
                    queue_ms=queue_ms,
                    encode_ms=encode_ms,
                    batch_size=len(texts),
                    worker=self.settings.worker_id,
                )
            )
        return replies, failed, encode_ms

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
        vectors = np.asarray(self.encoder.encode(texts, kinds), dtype=np.float32)
        if vectors.shape != (len(texts), self.encoder.dim):
            raise ValueError(f"encoder returned shape {vectors.shape} for {len(texts)} texts")
        if not np.isfinite(vectors).all():
            raise ValueError("encoder returned non-finite values")
        return vectors

    def _error(self, request_id: str, code: str, message: str) -> Reply:
        return Reply(id=request_id, code=code, message=message, worker=self.settings.worker_id)
