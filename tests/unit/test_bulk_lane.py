"""The worker's background (bulk) lane on fakeredis: questions first, the background's guaranteed
share, batches capped by texts and by expected cost, a request over the budget encoded in slices
with questions answered between them, and nothing of the lane lost when a worker dies."""

from __future__ import annotations

import fakeredis
import numpy as np
import pytest

from embedq.protocol import Keys, Request, unpack_reply
from embedq.worker.loop import Worker
from embedq.worker.reaper import Reaper
from embedq.worker.settings import Settings
from tests.support.fake_encoder import FakeEncoder, fake_vector
from tests.support.requests import make_request

KEYS = Keys()


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def make_worker(r: fakeredis.FakeRedis, **changes: object) -> tuple[Worker, FakeEncoder]:
    encoder = FakeEncoder()
    settings = Settings(worker_id="w1", batch_wait_ms=0, **changes)  # type: ignore[arg-type]
    return Worker(settings, encoder, r), encoder


def request(*texts: str, kind: str = "passage") -> Request:
    return make_request(*texts, kind=kind)


def reply_of(r: fakeredis.FakeRedis, req: Request):
    raw = r.lpop(KEYS.reply(req.id))
    assert raw is not None, "no reply written"
    return unpack_reply(raw)


def test_online_requests_go_before_every_waiting_bulk_request(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, bulk_max_batch=2)
    bulk = [request(f"doc {i}", f"doc {i}b") for i in range(3)]
    r.rpush(KEYS.bulk, *(b.pack() for b in bulk))
    online = [request(f"q {i}", kind="query") for i in range(3)]
    r.rpush(KEYS.queue, *(q.pack() for q in online))

    assert worker.serve_once(block=0.01) == 3  # all online requests, one batch
    assert encoder.calls == [3]
    assert r.llen(KEYS.bulk) == 3
    late = request("late question", kind="query")
    original = encoder.encode

    def encode_and_ask(texts, kinds):  # the question arrives while the bulk batch is encoded
        if texts[0] == "doc 0":
            r.rpush(KEYS.queue, late.pack())
        return original(texts, kinds)

    encoder.encode = encode_and_ask  # type: ignore[method-assign]
    assert worker.serve_once(block=0.01) == 1  # then one bulk request (two texts fill the batch)
    assert encoder.calls == [3, 2]
    assert worker.serve_once(block=0.01) == 1  # the question that arrived meanwhile goes next
    assert encoder.calls == [3, 2, 1]
    assert reply_of(r, late).ok
    while worker.serve_once(block=0.01):
        pass
    assert encoder.calls == [3, 2, 1, 2, 2]
    for b in bulk:
        reply = reply_of(r, b)
        np.testing.assert_array_equal(reply.vectors, np.stack([fake_vector("passage", t) for t in b.texts]))
    assert worker.counts["bulk_ok"] == 3
    assert worker.counts["bulk_texts"] == 6
    assert worker.counts["ok"] == 4
    assert r.llen(KEYS.bulk_processing("w1")) == 0


def test_background_requests_are_merged_up_to_the_bulk_batch(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, bulk_max_batch=3)
    r.rpush(KEYS.bulk, *(request(f"a{i}").pack() for i in range(4)))
    while worker.serve_once(block=0.01):
        pass
    assert encoder.calls == [3, 1]


def test_the_background_gets_its_share_while_questions_never_stop(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, bulk_every=2, bulk_max_batch=1)
    docs = [request(f"doc {i}") for i in range(3)]
    r.rpush(KEYS.bulk, *(d.pack() for d in docs))
    lanes = []
    original = encoder.encode

    def encode_and_ask(texts, kinds):  # a question is always waiting: one arrives per encode
        lanes.append("online" if kinds[0] == "query" else "bulk")
        r.rpush(KEYS.queue, request(f"q {len(lanes)}", kind="query").pack())
        return original(texts, kinds)

    encoder.encode = encode_and_ask  # type: ignore[method-assign]
    r.rpush(KEYS.queue, request("q 0", kind="query").pack())
    for _ in range(9):
        worker.serve_once(block=0.01)
    assert lanes == ["online", "online", "bulk"] * 3
    assert all(reply_of(r, d).ok for d in docs)


def test_batches_stop_at_the_budget_by_the_calibrated_cost(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, batch_budget_ms=100)
    worker.cost.calibrate([(1, 4, 30.0), (2, 4, 50.0)])  # 10 ms + 5 ms per token: 30 ms a 4-token text
    r.rpush(KEYS.bulk, *(request(f"w{i}").pack() for i in range(6)))  # "passage: w0": 4 tokens here
    while worker.serve_once(block=0.01):
        pass
    assert encoder.calls == [4, 2]  # 10 + 5*4*4 = 90 ms fits, a fifth text (110 ms) does not


def test_a_request_over_the_budget_is_sliced_and_questions_are_answered_between(
    r: fakeredis.FakeRedis,
) -> None:
    worker, encoder = make_worker(r, batch_budget_ms=100)
    worker.cost.calibrate([(1, 4, 30.0), (2, 4, 50.0)])
    big = request(*[f"w{i}" for i in range(8)])  # 170 ms expected: two slices
    r.rpush(KEYS.bulk, big.pack())
    question = request("urgent", kind="query")
    original = encoder.encode

    def encode_and_ask(texts, kinds):  # a question arrives while the first slice is encoded
        if encoder.calls == [] and texts[0] == "w0":
            r.rpush(KEYS.queue, question.pack())
        return original(texts, kinds)

    encoder.encode = encode_and_ask  # type: ignore[method-assign]
    worker.serve_once(block=0.01)
    assert encoder.calls == [4, 1, 4]  # a slice, the question, the other slice
    assert reply_of(r, question).ok
    reply = reply_of(r, big)
    np.testing.assert_array_equal(reply.vectors, np.stack([fake_vector("passage", t) for t in big.texts]))
    assert reply.batch_size == 8 and r.llen(KEYS.bulk_processing("w1")) == 0


def test_bulk_requests_have_their_own_size_limit(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, max_batch=4, bulk_max_batch=16)
    big = request(*[f"t{i}" for i in range(16)])
    too_big = request(*[f"t{i}" for i in range(17)])
    r.rpush(KEYS.bulk, big.pack(), too_big.pack())
    while worker.serve_once(block=0.01):
        pass
    assert encoder.calls == [16]
    assert reply_of(r, big).ok
    refused = reply_of(r, too_big)
    assert refused.code == "too_many_texts"
    assert "at most 16" in (refused.message or "")


def test_a_dead_workers_bulk_request_goes_back_to_the_bulk_list(r: fakeredis.FakeRedis) -> None:
    held, waiting, online = request("held"), request("waiting"), request("online", kind="query")
    r.sadd(KEYS.workers, "dead-1")
    r.rpush(KEYS.bulk_processing("dead-1"), held.pack())
    r.rpush(KEYS.processing("dead-1"), online.pack())
    r.rpush(KEYS.bulk, waiting.pack())
    report = Reaper(r, KEYS, max_attempts=3, reply_ttl=60, dead_max=100, me="survivor").reap_once()
    assert report.requeued == 2
    assert r.lrange(KEYS.bulk, 0, -1) == [held.pack(), waiting.pack()]
    assert r.lrange(KEYS.queue, 0, -1) == [online.pack()]
    assert r.exists(KEYS.bulk_processing("dead-1")) == 0


def test_a_restarted_worker_puts_back_what_its_last_run_held_in_both_lanes(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    held_bulk, held_online = request("b"), request("o", kind="query")
    r.rpush(KEYS.bulk_processing("w1"), held_bulk.pack())
    r.rpush(KEYS.processing("w1"), held_online.pack())
    worker._start()
    assert r.lrange(KEYS.bulk, 0, -1) == [held_bulk.pack()]
    assert r.lrange(KEYS.queue, 0, -1) == [held_online.pack()]
