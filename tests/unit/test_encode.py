"""One batch through the model (worker/encode.py): rows, token windows, fallback, replies."""

from __future__ import annotations

import fakeredis
import msgpack
import numpy as np
import pytest

from tests.support.fake_encoder import POISON, fake_vector
from tests.support.requests import make_request
from tests.support.worker_harness import KEYS, drain, make_worker, push, reply_of, request


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


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


def test_rows_are_laid_out_once_with_each_requests_span() -> None:
    from embedq.worker.encode import BatchRows
    from embedq.worker.lane import Taken

    a, b = request("one", "two"), request("doc", kind="passage")
    rows = BatchRows.of(
        [Taken(raw=a.pack(), taken_ms=0, request=a), Taken(raw=b.pack(), taken_ms=0, request=b)]
    )
    assert rows.texts == ("one", "two", "doc") and rows.kinds == ("query", "query", "passage")
    assert [e.rows for e in rows.entries] == [range(0, 2), range(2, 3)] and len(rows) == 3


def test_texts_over_the_window_are_cut_and_said_or_refused_when_asked(r: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(r)
    encoder.max_tokens = 6  # the fake counts words, plus the prefix's and 2 special tokens
    short, long_ok = request("two words"), request("one two three four five six seven")
    refused = make_request("one two three four five six seven", truncate=False)
    push(r, short, long_ok, refused)
    worker.serve_once(block=0.01)
    assert reply_of(r, short).truncated == ()
    cut = reply_of(r, long_ok)
    assert cut.ok and cut.truncated == (0,) and cut.tokens == (6,)
    error = reply_of(r, refused)
    assert error.code == "text_too_long" and "window is 6 tokens" in (error.message or "")
    assert encoder.calls == [2]  # the refused request never reached the model
