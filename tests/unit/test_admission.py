"""Deadline admission (worker/admission.py): what cannot be answered in time is not encoded."""

from __future__ import annotations

import fakeredis
import pytest

from embedq.protocol import Request
from embedq.worker.admission import CostModel
from tests.support.worker_harness import KEYS, make_worker, push, reply_of, request


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_expired_requests_are_skipped_without_encoding(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r)
    old, fresh = request("old", timeout=-1), request("fresh")
    push(r, old, fresh)
    worker.serve_once(block=0.01)
    assert r.llen(KEYS.reply(old.id)) == 0
    assert reply_of(r, fresh).ok
    assert encoder.calls == [1]
    assert worker.counts["expired"] == 1
    assert r.llen(KEYS.processing("w1")) == 0


def test_a_request_that_cannot_make_its_deadline_is_refused_and_a_late_answer_counted(
    r: fakeredis.FakeRedis,
) -> None:
    worker, encoder = make_worker(r)
    encoder.delay = 0.2
    worker.cost.calibrate([(1, 3, 200.0), (8, 3, 200.0)])  # every batch takes about 200 ms
    tight, roomy = request("tight", timeout=0.1), request("roomy", timeout=30)
    push(r, tight, roomy)
    worker.serve_once(block=0.01)
    refused = reply_of(r, tight)
    assert refused.code == "deadline_exceeded" and "200 ms" in refused.message
    assert reply_of(r, roomy).ok
    assert encoder.calls == [1]  # only the request that could be answered in time was encoded
    assert (worker.counts["late"], worker.counts.get("late_texts", 0)) == (1, 0)
    worker.cost.calibrate([(1, 3, 1.0), (8, 3, 1.0)])  # the estimate is wrong now: the answer comes late
    slow = request("slow", timeout=0.1)
    push(r, slow)
    worker.serve_once(block=0.01)
    assert reply_of(r, slow).ok
    assert worker.counts["late_texts"] == 1  # encoded for nobody: counted


def test_the_cost_model_fits_texts_times_padded_tokens_and_follows_measurements() -> None:
    cost = CostModel()
    assert cost.expected_ms(8, 100) == 0.0  # nothing measured yet: nothing is refused on a guess
    cost.calibrate([(1, 10, 12.0), (8, 10, 40.0), (1, 256, 110.0)])  # base + per token x texts x tokens
    assert cost.base_ms == pytest.approx(8.0, abs=0.5) and cost.per_token_ms == pytest.approx(0.4, abs=0.01)
    assert cost.expected_ms(4, 200) == pytest.approx(cost.base_ms + cost.per_token_ms * 800)
    before = cost.expected_ms(8, 10)
    for _ in range(30):
        cost.add(8, 10, 2 * before)  # the host got slower: the estimate follows
    assert cost.expected_ms(8, 10) == pytest.approx(2 * before, rel=0.05)
    for _ in range(30):
        cost.add(8, 10, 1000 * before)  # one wild measurement series cannot run away with it
    assert cost.expected_ms(8, 10) <= 4.01 * cost.expected_ms(8, 10) / cost.correction


def test_admission_plans_for_a_slow_encode_when_encodes_vary() -> None:
    cost = CostModel()
    cost.calibrate([(1, 10, 10.0), (8, 10, 10.0)])
    steady = CostModel(**{k: v for k, v in vars(cost).items()})
    for i in range(40):
        cost.add(1, 10, 10.0 * (0.5 if i % 2 else 1.5))  # the same mean, widely spread
        steady.add(1, 10, 10.0)
    assert cost.expected_ms(1, 10) == pytest.approx(10.0, rel=0.15)
    assert steady.cautious_ms(1, 10) == pytest.approx(10.0, rel=0.01)  # nothing to fear
    assert cost.cautious_ms(1, 10) >= 2.0 * cost.expected_ms(1, 10)  # plans for the slow half
    steady.add_rest(4.0)
    assert steady.cautious_ms(1, 10) == pytest.approx(10.0 + 0.2 * 4.0, rel=0.01)  # the reply's write too
    assert CostModel().cautious_ms(1, 10) == 0.0  # uncalibrated: nothing refused on a guess


def test_admission_keeps_what_can_finish_in_time_and_says_why_for_the_rest() -> None:
    from embedq.worker.admission import Admission
    from embedq.worker.lane import Taken
    from embedq.worker.metrics import Metrics
    from embedq.worker.outcomes import Outcomes

    metrics = Metrics()
    now = 1_000_000

    def taken(deadline: int) -> Taken:
        req = Request.new("query", ["q"], now_ms=now - 40, timeout_s=(deadline - now + 40) / 1000)
        return Taken(raw=req.pack(), taken_ms=now, request=req)

    gone, tight, roomy = taken(now - 1), taken(now + 50), taken(now + 5_000)
    out = Outcomes("w1")
    kept = Admission(metrics).admit([gone, tight, roomy], now, "online", out, encode_ms=100.0)
    assert kept == [roomy]
    assert [(r.id, r.code) for r in out.replies] == [(tight.request.id, "deadline_exceeded")]  # type: ignore[union-attr]
    assert "waited 40 ms" in (out.replies[0].message or "") and out.counts == ["late"]
    assert metrics.counts["expired"] == 1  # the one nobody waits for: no reply at all
