"""Micro-batching: when to stop gathering requests and encode. Pure logic, no Redis, no model.

The worker asks ``Batcher.next_batch`` for the next group of requests. The batcher blocks for a
first request, then keeps taking until the batch holds ``max_batch`` texts or the policy says
the wait is over. The wait is timed here, with a short poll, not as a Redis blocking-pop
timeout: Redis rounds those up to its ``hz`` tick (~100 ms at the default ``hz 10``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

DEFAULT_POLL_S = 0.001
"""How often the queue is looked at while a batch is gathering."""
MIN_WAIT_S = 0.0001
"""A wait shorter than this is no wait: the batch goes to encode."""


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

    def wait_for_more(self, *, size: int, waited: float) -> float:
        """Seconds more to wait for requests, given ``size`` texts gathered ``waited`` seconds
        after the first arrived; 0 means encode now."""
        if size >= self.max_batch:
            return 0.0
        return max(0.0, self.max_wait_s - waited)


class Source(Protocol[T]):
    """Where requests come from (the Redis request list, in the worker)."""

    def take(self, limit: int, *, block: float) -> Sequence[T]:
        """Up to ``limit`` requests already queued; with ``block`` > 0, first wait up to that
        many seconds for one to arrive. An empty result means none came."""
        ...


class Batcher(Generic[T]):
    """Forms batches from a source under a policy, carrying over what does not fit.

    ``size_of`` gives an item's number of texts (0 for a request that will be refused without
    encoding). Items stay in arrival order: once one does not fit, the batch is closed and it
    leads the next one.
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
    ) -> None:
        self.policy = policy
        self.source = source
        self.size_of = size_of
        self.clock = clock
        self.sleep = sleep
        self.poll_s = poll_s
        self.pending: deque[tuple[T, float]] = deque()
        self.last_wait_s = 0.0
        """How long the last batch waited, from its first item's arrival to closing."""

    def next_batch(self, *, block: float) -> list[T]:
        """The next batch; empty when nothing arrived within ``block`` seconds."""
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
                if items and size + n > self.policy.max_batch:
                    closed = True
                    break
                self.pending.popleft()
                items.append(item)
                size += n
                first_arrival = at if first_arrival is None else first_arrival

        add((), 0.0)  # carried-over items first
        if not items:
            got = self.source.take(self.policy.max_batch, block=block)
            if not got:
                return []
            add(got, self.clock())
        while not closed and size < self.policy.max_batch:
            assert first_arrival is not None
            wait = self.policy.wait_for_more(size=size, waited=self.clock() - first_arrival)
            got = self.source.take(self.policy.max_batch - size, block=0)
            if got:
                add(got, self.clock())
                continue
            if wait < MIN_WAIT_S:
                break
            self.sleep(min(wait, self.poll_s))
        assert first_arrival is not None
        self.last_wait_s = self.clock() - first_arrival
        return items

    def drain(self) -> list[T]:
        """Everything carried over and not yet batched (for putting back on shutdown)."""
        items = [item for item, _ in self.pending]
        self.pending.clear()
        return items
