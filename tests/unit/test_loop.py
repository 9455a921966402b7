"""The worker loop on fakeredis with the fake encoder: one batch sequenced take -> admit -> encode
-> reply, and the lifecycle around it. No model, no server."""

from __future__ import annotations

import fakeredis
import msgpack
import numpy as np
import pytest

from embedq.protocol import unpack_reply
from tests.support.fake_encoder import fake_vector
from tests.support.worker_harness import KEYS, drain, make_worker, push, reply_of, request


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


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
