"""The worker loop's decisions on fakeredis with a fake encoder: no model, no server."""

from __future__ import annotations

import fakeredis
import msgpack
import numpy as np
import pytest

from embedq.protocol import Heartbeat, Keys, Request, unpack_reply
from embedq.worker.admission import EncodeEstimate
from embedq.worker.loop import Worker
from embedq.worker.settings import Settings
from tests.support.fake_encoder import POISON, FakeEncoder, fake_vector
from tests.support.requests import make_request

KEYS = Keys()


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def make_worker(r: fakeredis.FakeRedis, **changes: object) -> tuple[Worker, FakeEncoder]:
    encoder = FakeEncoder()
    settings = Settings(worker_id="w1", batch_wait_ms=0, max_text_chars=50, **changes)  # type: ignore[arg-type]
    return Worker(settings, encoder, r), encoder


def request(*texts: str, kind: str = "query", timeout: float = 30.0) -> Request:
    return make_request(*texts, kind=kind, timeout=timeout)


def push(r: fakeredis.FakeRedis, *items: Request | bytes) -> None:
    r.rpush(KEYS.queue, *(i.pack() if isinstance(i, Request) else i for i in items))


def reply_of(r: fakeredis.FakeRedis, req: Request):
    raw = r.lpop(KEYS.reply(req.id))
    assert raw is not None, "no reply written"
    return unpack_reply(raw)


def drain(worker: Worker) -> None:
    while worker.serve_once(block=0.01):
        pass


def test_good_requests_get_their_vectors_in_order(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r)
    a, b = request("one", "two"), request("doc", kind="passage")
    push(r, a, b)
    drain(worker)
    ra, rb = reply_of(r, a), reply_of(r, b)
    np.testing.assert_array_equal(
        ra.vectors, np.stack([fake_vector("query", "one"), fake_vector("query", "two")])
    )
    np.testing.assert_array_equal(rb.vectors, fake_vector("passage", "doc")[None])
    assert ra.batch_size == rb.batch_size == 3
    assert ra.worker == "w1"
    assert encoder.calls == [3]


def test_reply_keys_expire_and_processing_list_empties(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r, reply_ttl=42)
    a = request("one")
    push(r, a)
    drain(worker)
    assert 0 < r.ttl(KEYS.reply(a.id)) <= 42
    assert r.llen(KEYS.processing("w1")) == 0
    assert r.llen(KEYS.queue) == 0


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"kind": "sentence"}, "invalid_kind"),
        ({"texts": []}, "empty_texts"),
        ({"texts": ["ok", 3]}, "invalid_text"),
        ({"texts": [""]}, "empty_text"),
        ({"texts": ["x" * 51]}, "text_too_long"),
        ({"texts": ["x"] * 9}, "too_many_texts"),
        ({"v": 1}, "unsupported_version"),
    ],
)
def test_bad_request_gets_an_error_and_its_batch_mates_their_vectors(
    r: fakeredis.FakeRedis, bad: dict[str, object], code: str
) -> None:
    worker, encoder = make_worker(r)
    good_before, good_after = request("before"), request("after")
    body = msgpack.unpackb(request("x").pack())
    body.update(bad)
    push(r, good_before, msgpack.packb(body), good_after)
    worker.serve_once(block=0.01)
    error = unpack_reply(r.lpop(KEYS.reply(body["id"])))
    assert not error.ok
    assert error.code == code
    assert reply_of(r, good_before).ok
    assert reply_of(r, good_after).ok
    assert encoder.calls == [2]
    assert r.llen(KEYS.processing("w1")) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1garbage",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 1, "texts": ["a"]}),
        msgpack.packb({"id": "../x"}),
    ],
)
def test_request_without_usable_id_goes_to_dead_letters(r: fakeredis.FakeRedis, raw: bytes) -> None:
    worker, _ = make_worker(r)
    good = request("fine")
    push(r, raw, good)
    worker.serve_once(block=0.01)
    assert reply_of(r, good).ok
    dead = [msgpack.unpackb(d) for d in r.lrange(KEYS.dead, 0, -1)]
    assert len(dead) == 1
    assert dead[0]["raw"] == raw
    assert dead[0]["code"] in {"invalid_msgpack", "invalid_request", "invalid_id"}
    assert dead[0]["reason"]
    assert r.keys(f"{KEYS.reply_prefix}*") == []


def test_dead_letter_list_is_capped(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r, dead_max=5)
    push(r, *[b"junk %d" % i for i in range(12)])
    drain(worker)
    assert r.llen(KEYS.dead) == 5
    assert msgpack.unpackb(r.lindex(KEYS.dead, 0))["raw"] == b"junk 11"


def test_failing_batch_is_retried_text_by_text(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, max_attempts=1)
    a, bad, b = request("fine"), request("also fine", f"{POISON} text"), request("ok", kind="passage")
    push(r, a, bad, b)
    worker.serve_once(block=0.01)
    error = reply_of(r, bad)
    assert error.code == "encode_failed"
    assert "text 1 could not be encoded: RuntimeError" in (error.message or "")
    np.testing.assert_array_equal(reply_of(r, a).vectors, fake_vector("query", "fine")[None])
    np.testing.assert_array_equal(reply_of(r, b).vectors, fake_vector("passage", "ok")[None])
    assert encoder.calls == [4, 1, 1, 1, 1]
    assert worker.counts["dead"] == 1
    assert worker.counts["ok"] == 2


def test_encoder_returning_garbage_is_an_error_not_a_crash(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, max_attempts=1)
    encoder.encode = lambda texts, kinds: np.full((len(texts), 8), np.nan, np.float32)  # type: ignore[method-assign]
    a = request("one")
    push(r, a)
    worker.serve_once(block=0.01)
    assert reply_of(r, a).code == "encode_failed"


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
    worker.estimate.calibrate(200.0, 200.0, 8)  # every batch takes about 200 ms
    tight, roomy = request("tight", timeout=0.1), request("roomy", timeout=30)
    push(r, tight, roomy)
    worker.serve_once(block=0.01)
    refused = reply_of(r, tight)
    assert refused.code == "deadline_exceeded" and "200 ms" in refused.message
    assert reply_of(r, roomy).ok
    assert encoder.calls == [1]  # only the request that could be answered in time was encoded
    assert (worker.counts["late"], worker.counts.get("late_texts", 0)) == (1, 0)
    worker.estimate.calibrate(1.0, 1.0, 8)  # the estimate is wrong now: the answer comes late
    slow = request("slow", timeout=0.1)
    push(r, slow)
    worker.serve_once(block=0.01)
    assert reply_of(r, slow).ok
    assert worker.counts["late_texts"] == 1  # encoded for nobody: counted


def test_the_encode_estimate_is_per_batch_size() -> None:
    estimate = EncodeEstimate()
    assert estimate.expected_ms(8) == 0.0
    estimate.calibrate(10.0, 24.0, 8)
    assert (estimate.expected_ms(1), estimate.expected_ms(8)) == (10.0, 24.0)
    assert estimate.expected_ms(4) == 16.0 and estimate.expected_ms(16) == 48.0
    estimate.add(8, 34.0)
    assert estimate.expected_ms(8) == pytest.approx(26.0)


def test_batches_hold_at_most_max_batch_texts(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, max_batch=4)
    reqs = [request(*[f"t{i}-{j}" for j in range(1 + i % 3)]) for i in range(30)]
    push(r, *reqs)
    drain(worker)
    assert max(encoder.calls) <= 4
    assert sum(encoder.calls) == sum(len(q.texts) for q in reqs)
    assert all(reply_of(r, q).ok for q in reqs)
    assert encoder.max_active == 1


def test_leftovers_of_an_earlier_run_are_put_back(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    a, b, c = request("a"), request("b"), request("c")
    r.rpush(KEYS.processing("w1"), a.pack(), b.pack())
    push(r, c)
    worker._start()
    assert r.lrange(KEYS.queue, 0, -1) == [a.pack(), b.pack(), c.pack()]
    assert r.llen(KEYS.processing("w1")) == 0


def test_put_back_restores_queue_order(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    reqs = [request(f"t{i}") for i in range(3)]
    push(r, *reqs)
    taken = worker.queue.take(3, block=0)
    push(r, request("later"))
    worker.queue.put_back(taken)
    assert r.lrange(KEYS.queue, 0, 2) == [q.pack() for q in reqs]
    assert r.llen(KEYS.processing("w1")) == 0


def test_poison_request_is_retried_then_dead_lettered(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r, max_attempts=3)
    poison, good = request(f"{POISON}!"), request("fine")
    push(r, poison, good)
    drain(worker)
    assert reply_of(r, good).ok
    error = reply_of(r, poison)
    assert error.code == "encode_failed"
    assert "gave up after 3 attempts" in (error.message or "")
    assert encoder.calls == [2, 1, 1, 1, 1]  # the batch, text by text, then two lone tries
    dead = [msgpack.unpackb(d) for d in r.lrange(KEYS.dead, 0, -1)]
    assert [(d["id"], d["code"]) for d in dead] == [(poison.id, "encode_failed")]
    assert worker.counts["retried"] == 2
    assert r.exists(KEYS.attempts(poison.id)) == 0
    assert r.llen(KEYS.queue) == r.llen(KEYS.processing("w1")) == 0


def test_heartbeat_registers_and_expires_and_leaving_cleans_up(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r, heartbeat_ttl=5)
    worker._start()
    assert r.sismember(KEYS.workers, "w1")
    assert 0 < r.pttl(KEYS.heartbeat("w1")) <= 5000
    info = Heartbeat.unpack(r.get(KEYS.heartbeat("w1")))
    assert (info.model, info.settings["max_batch"], info.worker, info.backend) == ("fake", 8, "w1", "fake")
    worker._leave()
    assert not r.exists(KEYS.heartbeat("w1"))
    assert not r.sismember(KEYS.workers, "w1")
