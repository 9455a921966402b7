"""Micro-batching: when to stop gathering requests and encode. Pure logic, no Redis, no model.

The worker asks ``Batcher.next_batch`` for the next group of requests. The batcher blocks for a
first request, then keeps taking until the batch holds ``max_batch`` texts, its expected encode
time reaches the budget (``cost_of``, ``budget_ms``: on a large model a few long passages already
cost seconds), or the policy says the wait is over: ``BatchPolicy`` waits out a fixed window
(the design record's), ``AdaptivePolicy`` only while requests keep arriving. The wait is timed
here, with a short poll, not as a Redis blocking-pop timeout: Redis rounds those up to its
``hz`` tick (~100 ms at the default ``hz 10``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

DEFAULT_POLL_S = 0.001
"""How often the queue is looked at while a batch is gathering."""
MIN_WAIT_S = 0.0001
"""A wait shorter than this is no wait: the batch goes to encode."""
BLOCKED_S = 0.0005
"""A first take that returned later than this had to wait: its requests count as arrivals."""


@dataclass(frozen=True)
class Gathering:
    """Where a batch being gathered stands, for the policy to decide on."""

    size: int
    """Texts gathered so far."""
    waited: float
    """Seconds since the first of them arrived."""
    since_arrival: float
    """Seconds since the last request arrived."""
    warm: bool
    """The previous batch held several requests and ended just before this one began: their
    producers (a chatbot's concurrent users) are likely to send again within milliseconds."""
    expected: int = 0
    """Requests the previous batch answered: how many producers may come back."""
    arrived: int = 0
    """Requests that arrived after this batch began gathering (not those already queued)."""


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """The design record's fixed policy: up to ``max_batch`` texts, waiting at most ``max_wait_s``
    from the first request's arrival; ``max_wait_s=0`` takes only what is already queued."""

    max_batch: int = 8
    max_wait_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {self.max_wait_s}")

    def wait_for_more(self, g: Gathering) -> float:
        """Seconds more to wait for requests; 0 means encode now."""
        if g.size >= self.max_batch:
            return 0.0
        return max(0.0, self.max_wait_s - g.waited)


@dataclass(frozen=True, kw_only=True)
class AdaptivePolicy(BatchPolicy):
    """Wait only for requests that are likely to come: a lone request at idle is encoded at once;
    right after a batch of several requests, wait for their producers to send again, until as
    many have arrived or arrivals pause for ``gap_s``. Still capped at ``max_batch`` texts and
    ``max_wait_s``."""

    gap_s: float = 0.006

    def wait_for_more(self, g: Gathering) -> float:
        """Seconds more to wait: while warm, some expected producers are still out, and the last
        arrival is less than ``gap_s`` ago."""
        cap = super().wait_for_more(g)
        if cap <= 0 or not g.warm or g.arrived >= g.expected:
            return 0.0
        return max(0.0, min(cap, self.gap_s - g.since_arrival))


POLICIES = {"adaptive": AdaptivePolicy, "fixed": BatchPolicy}
"""Policies by the name used in settings (``EMBED_BATCH_POLICY``)."""


def make_policy(name: str, *, max_batch: int, max_wait_s: float, gap_s: float) -> BatchPolicy:
    """The policy called ``name``; a clear error for an unknown one."""
    if name == "fixed":
        return BatchPolicy(max_batch=max_batch, max_wait_s=max_wait_s)
    if name == "adaptive":
        return AdaptivePolicy(max_batch=max_batch, max_wait_s=max_wait_s, gap_s=gap_s)
    raise ValueError(f"unknown batch policy {name!r}: choose one of {sorted(POLICIES)}")


class Source(Protocol[T_co]):
    """Where requests come from (the Redis request list, in the worker)."""

    def take(self, limit: int, *, block: float) -> Sequence[T_co]:
        """Up to ``limit`` requests already queued; with ``block`` > 0, first wait up to that
        many seconds for one to arrive. An empty result means none came."""
        ...


class Batcher(Generic[T]):
    """Forms batches from a source under a policy, carrying over what does not fit.

    ``size_of`` gives an item's number of texts (0 for a request that will be refused without
    encoding); ``cost_of`` the expected encode ms of items as one batch, which must stay within
    ``budget_ms`` (0: no cap) unless the batch is a single item. Items stay in arrival order: once
    one does not fit, the batch is closed and it leads the next one.
    """

    def __init__(
        self,
        policy: BatchPolicy,
        source: Source[T],
        size_of: Callable[[T], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = DEFAULT_POLL_S,
        cost_of: Callable[[Sequence[T]], float] | None = None,
        budget_ms: float = 0.0,
    ) -> None:
        self.policy = policy
        self.source = source
        self.size_of = size_of
        self.cost_of = cost_of
        self.budget_ms = budget_ms
        self.clock = clock
        self.sleep = sleep
        self.poll_s = poll_s
        self.pending: deque[tuple[T, float]] = deque()
        self.last_wait_s = 0.0
        """How long the last batch waited, from its first item's arrival to closing."""
        self._last_count = 0

    def offer(self, items: Sequence[T]) -> None:
        """Items taken for this batcher elsewhere (the worker's finish script takes the next
        batch in the same round trip): they lead the next batch, after anything carried over."""
        now = self.clock()
        for item in items:
            self.pending.append((item, now))

    def next_batch(self, *, block: float, drained: bool = False) -> list[T]:
        """The next batch; empty when nothing arrived within ``block`` seconds. ``drained``: the
        queue was seen empty a moment ago (by the script that took the offered items), so a
        batch of those that will not wait goes without asking again."""
        started = self.clock()
        previous = self._last_count
        items: list[T] = []
        size = 0
        first_arrival: float | None = None
        closed = False

        def add(new: Sequence[T], arrived: float) -> None:
            nonlocal size, closed, first_arrival
            for item in new:
                self.pending.append((item, arrived))
            while self.pending and not closed:
                item, at = self.pending[0]
                n = self.size_of(item)
                if items and (size + n > self.policy.max_batch or self._over_budget([*items, item])):
                    closed = True
                    break
                self.pending.popleft()
                items.append(item)
                size += n
                first_arrival = at if first_arrival is None else first_arrival

        add((), 0.0)  # carried-over and offered items first
        arrived = 0
        # ``drained`` from here on: the last look at the queue (the caller's, or this batch's last
        # take getting fewer than it asked for) found it empty and no time was spent since, so a
        # batch that will not wait goes without asking again (one round trip less per batch; a
        # lone question at idle is taken once)
        if not items:
            got = self.source.take(self.policy.max_batch, block=block)
            if not got:
                if block > 0:  # a real idle wait: whoever sent the last batch is not coming back
                    self._last_count = 0
                return []
            drained = len(got) < self.policy.max_batch
            now = self.clock()
            if now - started > BLOCKED_S:  # nothing was queued: these just arrived
                arrived = len(got)
            add(got, now)
        assert first_arrival is not None
        last_arrival = max(first_arrival, started)
        warm = previous > 1 and first_arrival - started < self.policy.max_wait_s
        while not closed and size < self.policy.max_batch:
            now = self.clock()
            wait = self.policy.wait_for_more(
                Gathering(
                    size=size,
                    waited=now - first_arrival,
                    since_arrival=now - last_arrival,
                    warm=warm,
                    expected=previous,
                    arrived=arrived,
                )
            )
            if wait < MIN_WAIT_S and drained:
                break
            asked = self.policy.max_batch - size
            got = self.source.take(asked, block=0)
            drained = len(got) < asked
            if got:
                last_arrival = self.clock()
                arrived += len(got)
                add(got, last_arrival)
            elif wait >= MIN_WAIT_S:
                self.sleep(min(wait, self.poll_s))
                drained = False  # requests may have come while sleeping
        self.last_wait_s = self.clock() - first_arrival
        self._last_count = len(items)
        return items

    def _over_budget(self, items: Sequence[T]) -> bool:
        return bool(self.budget_ms and self.cost_of is not None and self.cost_of(items) > self.budget_ms)

    def drain(self) -> list[T]:
        """Everything carried over and not yet batched (for putting back on shutdown)."""
        items = [item for item, _ in self.pending]
        self.pending.clear()
        return items
