"""The worker loop: gather a batch, refuse what is invalid, encode the rest once, answer each.

One process runs one loop and one encode at a time, by design: on a CPU, concurrent encodes
fight for the cores (the design record: 10 at once took 8x longer each). Nothing a request
carries can stop the loop; a batch whose encode fails is retried text by text so only the bad
text's request gets an error.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import redis

from producer.protocol import Reply

from .batching import Batcher, BatchPolicy
from .encoder import Encoder
from .redis_queue import DeadLetter, RedisQueue, Taken
from .settings import Settings

log = logging.getLogger("embedq.worker")

IDLE_BLOCK_S = 1.0
"""How long one blocking take waits for a first request before the loop checks for a stop."""
BACKOFF_MAX_S = 2.0
"""Cap of the wait between reconnection attempts while Redis is unreachable."""


class Worker:
    """Serves one request queue with one encoder until ``stop()`` is called."""

    def __init__(self, settings: Settings, encoder: Encoder, client: redis.Redis) -> None:
        self.settings = settings
        self.encoder = encoder
        self.redis = client
        self.queue = RedisQueue(
            client,
            settings.keys,
            settings.worker_id,
            limits=settings.limits,
            reply_ttl=settings.reply_ttl,
            dead_max=settings.dead_max,
        )
        self.policy = BatchPolicy(max_batch=settings.max_batch, max_wait_s=settings.batch_wait_ms / 1000.0)
        self.batcher: Batcher[Taken] = Batcher(self.policy, self.queue, lambda t: t.size)
        self.counts: Counter[str] = Counter()
        self.batches = 0
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return (safe from a signal handler)."""
        self._stopping = True

    def warm_up(self) -> None:
        """One encode before serving, so the first real request does not pay for lazy setup."""
        self.encoder.encode(["warm-up"], ["query"])

    def describe(self) -> str:
        """The start-up line: everything that decides what vectors and latency a user gets."""
        s, e = self.settings, self.encoder
        source = getattr(e, "prefix_source", "encoder")
        return (
            f"worker {s.worker_id} ready: model={e.name} dim={e.dim} device={s.device} "
            f"threads={s.threads} max_batch={s.max_batch} batch_wait_ms={s.batch_wait_ms:g} "
            f"prefixes: query={e.prefixes['query']!r} passage={e.prefixes['passage']!r} "
            f"({source}) queue={s.queue!r}"
        )

    def run(self) -> None:
        """Serve until stopped; survives Redis outages by reconnecting with capped backoff."""
        self._call_redis(self._recover)
        log.info(self.describe())
        while not self._stopping:
            if not self._call_redis(self.serve_once):
                self.batcher.drain()  # what it held is back in Redis (recovered on reconnect)
        self._call_redis(lambda: self.queue.put_back(self.batcher.drain()))
        log.info("worker %s stopped: %s", self.settings.worker_id, dict(self.counts))

    def _recover(self) -> None:
        moved = self.queue.recover()
        if moved:
            log.warning("put %d request(s) left by an earlier run back on the queue", moved)

    def _call_redis(self, fn: Callable[[], object]) -> bool:
        """Run ``fn``; on a Redis connection error wait with capped backoff until Redis answers
        again, put back what this worker held, and return False."""
        try:
            fn()
            return True
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.error("lost Redis (%s); reconnecting", exc)
        delay = 0.05
        while True:
            time.sleep(delay)
            try:
                self.redis.ping()
                self._recover()
                log.info("Redis is back; serving again")
                return False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if self._stopping:
                    return False
                delay = min(delay * 2, BACKOFF_MAX_S)

    # --- one batch ------------------------------------------------------------------------

    def serve_once(self, block: float = IDLE_BLOCK_S) -> int:
        """Gather and answer one batch; returns the number of requests handled (0 when idle)."""
        batch = self.batcher.next_batch(block=block)
        if batch:
            self.process(batch)
        return len(batch)

    def process(self, batch: Sequence[Taken]) -> None:
        """Answer every request of a batch: errors for refused ones, vectors for the rest."""
        now = time.time()
        replies: list[Reply] = []
        dead: list[DeadLetter] = []
        live: list[Taken] = []
        for item in batch:
            if item.rejected is not None:
                rej = item.rejected
                log.warning("refused a request (%s): %s", rej.code, rej.message)
                self.counts["error"] += 1
                if rej.request_id is None:
                    self.counts["dead"] += 1
                    dead.append(DeadLetter(rej.message, rej.code, item.raw, self.settings.worker_id))
                else:
                    replies.append(self._error(rej.request_id, rej.code, rej.message))
            elif item.request is not None and item.request.deadline < now:
                self.counts["expired"] += 1  # its producer has stopped waiting: skip the encode
            else:
                live.append(item)
        encode_ms = 0.0
        if live:
            encoded, encode_ms = self._encode_and_reply(live)
            replies.extend(encoded)
        started = time.perf_counter()
        self.queue.finish(batch, replies, dead)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch %d: %d request(s), %d text(s); waited %.1f ms, encode %.1f ms, reply %.1f ms",
                self.batches,
                len(batch),
                sum(t.size for t in live),
                self.batcher.last_wait_s * 1000,
                encode_ms,
                (time.perf_counter() - started) * 1000,
            )

    def _encode_and_reply(self, live: Sequence[Taken]) -> tuple[list[Reply], float]:
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
        self.counts["texts"] += len(texts)

        replies: list[Reply] = []
        row = 0
        for item in live:
            request = item.request
            assert request is not None
            rows = range(row, row + len(request.texts))
            row = rows.stop
            failed = [(i - rows.start, failures[i]) for i in rows if i in failures]
            if failed:
                index, why = failed[0]
                self.counts["error"] += 1
                replies.append(
                    self._error(request.id, "encode_failed", f"text {index} could not be encoded: {why}")
                )
                continue
            self.counts["ok"] += 1
            replies.append(
                Reply(
                    id=request.id,
                    vectors=vectors[rows.start : rows.stop],
                    queue_ms=max(0.0, (item.taken_at - request.sent_at) * 1000.0),
                    encode_ms=encode_ms,
                    batch_size=len(texts),
                    worker=self.settings.worker_id,
                )
            )
        return replies, encode_ms

    def _encode(self, texts: list[str], kinds: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Encode a batch; if that fails, each text alone, so only bad texts fail."""
        try:
            return self._checked(texts, kinds), {}
        except Exception as exc:
            log.warning("encode of %d text(s) failed (%s); retrying text by text", len(texts), exc)
        out = np.zeros((len(texts), self.encoder.dim), np.float32)
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
