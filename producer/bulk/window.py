"""A bulk job's requests in flight: sent a window at a time (``embedq.flow``, at most ``inflight``)
onto the workers' bulk list, each waited for with the job's own patience, and sent again after
Redis comes back from an outage.

The job decides what to send (``todo``, lists of row positions) and what a reply means; this
module does the Redis side of it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from .. import defaults
from ..clock import RedisClock
from ..connection import REDIS_DOWN, Backoff
from ..flow import FlowControl
from ..protocol import WAKE_TOKENS_MAX, Keys, Request
from ..workers import live_workers
from .options import BLOCK_S, BulkError, BulkOptions

log = logging.getLogger("embedq.bulk")

QUIET_S = 10.0
"""Without a reply for this long, progress says whether any worker is live to answer."""


@dataclass
class Pending:
    """A bulk request sent and not yet answered."""

    request: Request
    positions: list[int]
    sent: float = field(default_factory=time.monotonic)
    """When it was sent, on this host's monotonic clock (the job's own patience)."""


class RequestWindow:
    """Sends a job's bulk requests and says how long to wait for them."""

    def __init__(self, client: redis.Redis, options: BulkOptions) -> None:
        self.redis = client
        self.options = options
        self.keys = Keys(options.queue)
        self.clock = RedisClock()
        self.flow = FlowControl.for_timeout(defaults.TIMEOUT_S, window_max=options.inflight)
        """How many requests are out at once: grows while replies say the background lane is
        short, shrinks while they waited longer than a producer's call could (the lane is shared
        with the clients' document calls), between 1 and ``inflight``."""
        self.pending: dict[str, Pending] = {}
        """Reply key -> the request waiting on it."""
        self.last_reply = time.monotonic()

    def send(self, todo: deque[list[int]], texts: list[str], fingerprint: str | None = None) -> None:
        """Queue requests from ``todo`` until the window is full, in one round trip; each pinned
        to the job's model (``--model``) and, once the output has one, to its ``fingerprint``."""
        payloads = []
        if todo and len(self.pending) < self.flow.window:
            self.clock.sync(self.redis)
        now = self.clock.now_ms()
        while todo and len(self.pending) < self.flow.window:
            positions = todo.popleft()
            request = Request.new(
                self.options.kind,
                [texts[i] for i in positions],
                now_ms=now,
                timeout_s=self.options.request_timeout,
                truncate=self.options.truncate,
                model=self.options.model,
                fingerprint=fingerprint,
            )
            self.pending[self.keys.reply(request.id)] = Pending(request, positions)
            payloads.append(request.pack())
        if payloads:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.keys.bulk, *payloads)
            pipe.rpush(self.keys.wake, *([1] * min(len(payloads), WAKE_TOKENS_MAX)))
            pipe.ltrim(self.keys.wake, -WAKE_TOKENS_MAX, -1)
            pipe.execute()

    def pop(self) -> tuple[Pending, bytes] | None:
        """The next reply (its request and raw body), or None after a wait of at most BLOCK_S."""
        popped = self.redis.blpop(list(self.pending), timeout=self.wait_s())
        if popped is None:
            return None
        key = popped[0].decode() if isinstance(popped[0], bytes) else popped[0]
        body = popped[1]
        self.last_reply = time.monotonic()
        return self.pending.pop(key), body.encode() if isinstance(body, str) else body

    def wait_s(self) -> float:
        """How long the next pop may block: at most BLOCK_S, less near the first deadline."""
        first = min(p.sent for p in self.pending.values()) + self.options.request_timeout
        return max(0.1, min(BLOCK_S, first - time.monotonic()))

    def check_deadlines(self) -> None:
        """``BulkError`` once a request has waited ``request_timeout`` for any worker."""
        limit = time.monotonic() - self.options.request_timeout
        if any(p.sent < limit for p in self.pending.values()):
            raise BulkError(
                f"no worker answered a bulk request within {self.options.request_timeout:g} s: are workers "
                f"running on queue {self.options.queue!r}? (embedq status). Run the job again to resume"
            )

    def resend_after(self, exc: Exception, todo: deque[list[int]], report: Callable[[str], None]) -> None:
        """After losing Redis: wait for it, then put every unanswered request back in ``todo``
        (what was queued may be gone with Redis; a reply to an old request is never read)."""
        self.wait_for_redis(exc, report)
        todo.extendleft(reversed([p.positions for p in self.pending.values()]))
        self.pending.clear()

    def wait_for_redis(self, exc: Exception, report: Callable[[str], None]) -> None:
        """Wait (capped backoff) until Redis answers again; give up after ``request_timeout``."""
        log.warning("lost Redis (%s); waiting for it to come back", exc)
        report("waiting for Redis")
        down_since = time.monotonic()
        backoff = Backoff(start=0.1, cap=2.0)
        while True:
            time.sleep(backoff.next())
            try:
                self.redis.ping()
            except REDIS_DOWN as again:
                if time.monotonic() - down_since > self.options.request_timeout:
                    raise BulkError(
                        f"Redis unreachable for {self.options.request_timeout:g} s ({again}); "
                        "run the job again to resume"
                    ) from again
                continue
            log.info("Redis is back after %.1f s; resending this chunk's unanswered requests",
                     time.monotonic() - down_since)  # fmt: skip
            return

    def waiting_phase(self) -> str:
        """``encoding``, or after a while without replies, whether any worker is there to answer."""
        if time.monotonic() - self.last_reply < QUIET_S:
            return "encoding"
        try:
            live = live_workers(self.redis, self.keys)
        except REDIS_DOWN:
            return "encoding"
        if not live:
            return f"waiting: no live worker on queue {self.options.queue!r}"
        return "encoding (waiting behind online traffic)"
