"""The batching policy and batcher, driven by a fake clock and a scripted queue."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from embedq.worker.batching import AdaptivePolicy, Batcher, BatchPolicy, Gathering, make_policy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedSource:
    """A queue whose items appear at scripted times: ``arrivals`` maps time -> items."""

    def __init__(self, clock: FakeClock, arrivals: list[tuple[float, list[str]]]) -> None:
        self.clock = clock
        self.arrivals = sorted(arrivals, key=lambda a: a[0])
        self.queue: list[str] = []
        self.takes: list[tuple[int, float]] = []

    def _arrive(self) -> None:
        while self.arrivals and self.arrivals[0][0] <= self.clock.now:
            self.queue.extend(self.arrivals.pop(0)[1])

    def take(self, limit: int, *, block: float) -> Sequence[str]:
        self.takes.append((limit, block))
        self._arrive()
        if block > 0 and not self.queue:
            if self.arrivals and self.arrivals[0][0] <= self.clock.now + block:
                self.clock.now = self.arrivals[0][0]
                self._arrive()
            else:
                self.clock.now += block
                return []
        got, self.queue = self.queue[:limit], self.queue[limit:]
        return got


def size_of(item: str) -> int:
    """Items look like 'name/3' for 3 texts; a bare name is one text, 'bad' is zero."""
    if item == "bad":
        return 0
    return int(item.split("/")[1]) if "/" in item else 1


def make(
    arrivals: list[tuple[float, list[str]]],
    *,
    max_batch: int = 8,
    wait: float = 0.05,
    policy: BatchPolicy | None = None,
) -> tuple[Batcher[str], ScriptedSource, FakeClock]:
    clock = FakeClock()
    source = ScriptedSource(clock, arrivals)
    batcher = Batcher(
        policy or BatchPolicy(max_batch=max_batch, max_wait_s=wait),
        source,
        size_of,
        clock=clock,
        sleep=clock.sleep,
        poll_s=0.001,
    )
    return batcher, source, clock


def g(
    size: int = 1,
    waited: float = 0.0,
    since: float = 0.0,
    warm: bool = True,
    expected: int = 8,
    arrived: int = 0,
) -> Gathering:
    return Gathering(
        size=size, waited=waited, since_arrival=since, warm=warm, expected=expected, arrived=arrived
    )


def test_fixed_policy_waits_the_rest_of_the_window() -> None:
    policy = BatchPolicy(max_batch=8, max_wait_s=0.05)
    assert policy.wait_for_more(g(waited=0.0)) == pytest.approx(0.05)
    assert policy.wait_for_more(g(waited=0.03, warm=False)) == pytest.approx(0.02)
    assert policy.wait_for_more(g(waited=0.07)) == 0.0
    assert policy.wait_for_more(g(size=8)) == 0.0


def test_adaptive_policy_waits_only_while_requests_keep_coming() -> None:
    policy = AdaptivePolicy(max_batch=8, max_wait_s=0.05, gap_s=0.002)
    assert policy.wait_for_more(g(warm=False)) == 0.0  # a lone request at idle: go now
    assert policy.wait_for_more(g(since=0.0005)) == pytest.approx(0.0015)
    assert policy.wait_for_more(g(since=0.003)) == 0.0  # the arrivals stopped
    assert policy.wait_for_more(g(waited=0.0495, since=0.0)) == pytest.approx(0.0005)  # capped
    assert policy.wait_for_more(g(size=8, since=0.0)) == 0.0
    assert policy.wait_for_more(g(since=0.0, expected=3, arrived=3)) == 0.0  # all came back


def test_policies_by_name() -> None:
    assert type(make_policy("fixed", max_batch=8, max_wait_s=0.05, gap_s=0.002)) is BatchPolicy
    adaptive = make_policy("adaptive", max_batch=4, max_wait_s=0.01, gap_s=0.003)
    assert adaptive == AdaptivePolicy(max_batch=4, max_wait_s=0.01, gap_s=0.003)
    with pytest.raises(ValueError, match="unknown batch policy 'greedy'"):
        make_policy("greedy", max_batch=8, max_wait_s=0.05, gap_s=0.002)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_batch=0)
    with pytest.raises(ValueError):
        BatchPolicy(max_wait_s=-1)


def test_idle_queue_gives_an_empty_batch_after_blocking() -> None:
    batcher, source, clock = make([])
    assert batcher.next_batch(block=1.0) == []
    assert clock.now == pytest.approx(1.0)
    assert source.takes == [(8, 1.0)]


def test_full_queue_gives_a_full_batch_without_waiting() -> None:
    batcher, _, clock = make([(0.0, [f"r{i}" for i in range(20)])])
    assert batcher.next_batch(block=1.0) == [f"r{i}" for i in range(8)]
    assert clock.now == 0.0
    assert batcher.next_batch(block=1.0) == [f"r{i}" for i in range(8, 16)]
    assert batcher.next_batch(block=1.0) == [f"r{i}" for i in range(16, 20)]


def test_lone_request_waits_the_whole_window_then_goes() -> None:
    batcher, _, clock = make([(0.2, ["a"])])
    assert batcher.next_batch(block=1.0) == ["a"]
    assert clock.now == pytest.approx(0.25, abs=0.002)


def test_stragglers_within_the_window_join_the_batch() -> None:
    batcher, _, clock = make([(0.0, ["a"]), (0.01, ["b", "c"]), (0.04, ["d"]), (0.08, ["late"])])
    assert batcher.next_batch(block=1.0) == ["a", "b", "c", "d"]
    assert clock.now == pytest.approx(0.05, abs=0.002)
    assert batcher.next_batch(block=1.0) == ["late"]


def test_batch_closes_as_soon_as_it_is_full() -> None:
    batcher, _, clock = make([(0.0, ["a"]), (0.01, [f"r{i}" for i in range(7)]), (0.02, ["next"])])
    assert batcher.next_batch(block=1.0) == ["a"] + [f"r{i}" for i in range(7)]
    assert clock.now == pytest.approx(0.01, abs=0.002)


def test_zero_wait_takes_only_what_is_queued() -> None:
    batcher, _, clock = make([(0.0, ["a", "b"]), (0.001, ["c"])], wait=0.0)
    assert batcher.next_batch(block=1.0) == ["a", "b"]
    assert clock.now == 0.0
    assert batcher.next_batch(block=1.0) == ["c"]


def test_a_batch_that_will_not_wait_asks_the_queue_once() -> None:
    # each take is a Redis round trip: a queue just drained is not asked again at once
    batcher, source, _ = make([(0.0, ["a", "b"]), (0.001, ["c"])], wait=0.0)
    assert batcher.next_batch(block=1.0) == ["a", "b"]
    assert source.takes == [(8, 1.0)]
    lone, source, _ = make([(0.5, ["a"])], policy=ADAPTIVE)
    assert lone.next_batch(block=1.0) == ["a"]
    assert source.takes == [(8, 1.0)]


def test_a_take_that_filled_its_limit_is_followed_by_another() -> None:
    # eight requests taken, four of them refused (no texts): the queue may hold more, so ask
    batcher, source, _ = make([(0.0, ["bad"] * 4 + ["a", "b", "c", "d", "e", "f"])], wait=0.0)
    assert batcher.next_batch(block=1.0) == ["bad"] * 4 + ["a", "b", "c", "d", "e", "f"]
    assert source.takes == [(8, 1.0), (4, 0)]


def test_the_window_ends_with_a_last_look_at_the_queue() -> None:
    # a request that came during the last poll interval still joins
    batcher, _, clock = make([(0.0, ["a"]), (0.0495, ["b"])], wait=0.05)
    assert batcher.next_batch(block=1.0) == ["a", "b"]
    assert clock.now >= 0.0495


def test_multi_text_request_that_does_not_fit_leads_the_next_batch() -> None:
    batcher, _, _ = make([(0.0, ["a/5", "b/5", "c/1"])])
    assert batcher.next_batch(block=1.0) == ["a/5"]
    assert batcher.next_batch(block=1.0) == ["b/5", "c/1"]


def test_batches_never_exceed_max_texts() -> None:
    items = [f"r{i}/{1 + i % 4}" for i in range(40)]
    batcher, _, _ = make([(0.0, items)])
    seen: list[str] = []
    while batch := batcher.next_batch(block=0.1):
        assert sum(size_of(i) for i in batch) <= 8
        seen.extend(batch)
    assert seen == items


def test_refused_requests_do_not_use_up_the_batch() -> None:
    batcher, _, _ = make([(0.0, ["bad", "bad", "a/4", "bad", "b/4", "c"])])
    assert batcher.next_batch(block=1.0) == ["bad", "bad", "a/4", "bad", "b/4"]
    assert batcher.next_batch(block=1.0) == ["c"]


def test_carried_over_items_do_not_wait_again() -> None:
    batcher, _, clock = make([(0.0, ["a/6", "b/6"])])
    assert batcher.next_batch(block=1.0) == ["a/6"]
    clock.now += 0.2  # the encode of the first batch
    assert batcher.next_batch(block=1.0) == ["b/6"]
    assert clock.now == pytest.approx(0.2)


def test_drain_returns_carried_over_items() -> None:
    batcher, _, _ = make([(0.0, ["a/6", "b/6"])])
    batcher.next_batch(block=1.0)
    assert batcher.drain() == ["b/6"]
    assert batcher.drain() == []


ADAPTIVE = AdaptivePolicy(max_batch=8, max_wait_s=0.05, gap_s=0.002)


def test_adaptive_sends_a_lone_request_at_idle_at_once() -> None:
    batcher, _, clock = make([(0.5, ["a"]), (0.53, ["b"])], policy=ADAPTIVE)
    assert batcher.next_batch(block=1.0) == ["a"]
    assert clock.now == pytest.approx(0.5)


def test_adaptive_keeps_filling_while_producers_come_back() -> None:
    # a batch of 4, then the same 4 producers return 1 ms apart, then a straggler 10 ms later
    batcher, _, clock = make([(0.0, ["a", "b", "c", "d"])], policy=ADAPTIVE)
    assert batcher.next_batch(block=1.0) == ["a", "b", "c", "d"]
    clock.now = 1.0  # the encode of that batch
    batcher.source.arrivals = [(1.001, ["e", "f"]), (1.0015, ["g"]), (1.0025, ["h"]), (1.0125, ["late"])]
    assert batcher.next_batch(block=1.0) == ["e", "f", "g", "h"]
    assert clock.now == pytest.approx(1.0025, abs=0.0011)  # all four producers are back: go
    assert batcher.next_batch(block=1.0) == ["late"]


def test_adaptive_stops_at_max_wait_even_if_arrivals_continue() -> None:
    stream = [(1.0 + i * 0.0015, [f"r{i}"]) for i in range(40)]
    first = [f"x{i}" for i in range(40)]
    batcher, source, clock = make([(0.0, first)], policy=AdaptivePolicy(max_batch=64, max_wait_s=0.01))
    batcher.next_batch(block=1.0)
    clock.now = 1.0
    source.arrivals = stream
    batch = batcher.next_batch(block=1.0)
    assert 6 <= len(batch) <= 8  # 10 ms of arrivals every 1.5 ms
    assert clock.now == pytest.approx(1.01, abs=0.0011)


def test_adaptive_waits_out_the_gap_when_fewer_come_back() -> None:
    batcher, source, clock = make([(0.0, ["a", "b", "c", "d"])], policy=ADAPTIVE)
    batcher.next_batch(block=1.0)
    clock.now = 1.0
    source.arrivals = [(1.0005, ["e"]), (1.001, ["f"]), (1.05, ["late"])]
    assert batcher.next_batch(block=1.0) == ["e", "f"]
    assert clock.now == pytest.approx(1.003, abs=0.0011)  # one gap (2 ms) after the last arrival


def test_a_batch_closes_at_its_cost_budget_and_the_rest_leads_the_next() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, [(0.0, ["a/2", "b/2", "c/2", "d/1"])])

    def cost(items: Sequence[str]) -> float:  # 40 ms a text
        return 40.0 * sum(size_of(i) for i in items)

    batcher = Batcher(
        BatchPolicy(max_batch=8, max_wait_s=0.0),
        source,
        size_of,
        clock=clock,
        sleep=clock.sleep,
        cost_of=cost,
        budget_ms=170.0,
    )
    assert batcher.next_batch(block=0.1) == ["a/2", "b/2"]  # 160 ms; a third would be 240
    assert batcher.next_batch(block=0.1) == ["c/2", "d/1"]
    over = Batcher(
        BatchPolicy(max_batch=8, max_wait_s=0.0),
        ScriptedSource(clock, [(clock.now, ["huge/8"])]),
        size_of,
        clock=clock,
        sleep=clock.sleep,
        cost_of=cost,
        budget_ms=170.0,
    )
    assert over.next_batch(block=0.1) == ["huge/8"]  # alone over the budget: still one batch


def test_offered_items_lead_the_next_batch_without_asking_a_drained_queue() -> None:
    # the worker's finish script took them in its round trip and saw the queue empty after
    batcher, source, _ = make([], policy=ADAPTIVE)
    batcher.offer(["a", "b"])
    assert batcher.next_batch(block=0, drained=True) == ["a", "b"]
    assert source.takes == []


def test_offered_items_are_topped_up_when_the_queue_was_not_drained() -> None:
    batcher, source, _ = make([(0.0, ["c"])], wait=0.0)
    batcher.offer(["a", "b"])
    assert batcher.next_batch(block=0) == ["a", "b", "c"]
    assert source.takes == [(6, 0)]


def test_offered_items_alone_do_not_vouch_for_the_queue() -> None:
    # between the offer and the batch, time passed (a background batch): requests may have come,
    # and only a fresh look at the queue (the worker's ``Depths``) may say otherwise
    batcher, source, clock = make([(0.1, ["c"])], wait=0.0)
    batcher.offer(["a"])
    clock.now += 0.2
    assert batcher.next_batch(block=0) == ["a", "c"]
    assert source.takes == [(7, 0)]
