"""One request list and its processing list (worker/lane.py): take, finish, put back, on fakeredis."""

from __future__ import annotations

import fakeredis
import msgpack
import pytest

from embedq.protocol import WAKE_TOKENS_MAX
from embedq.worker.lane import FRESH_S, Depths
from tests.support.worker_harness import KEYS, drain, make_worker, push, request


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_reply_keys_expire_and_processing_list_empties(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r, reply_ttl=42)
    a = request("one")
    push(r, a)
    drain(worker)
    assert 0 < r.ttl(KEYS.reply(a.id)) <= 42
    assert r.llen(KEYS.processing("w1")) == 0
    assert r.llen(KEYS.queue) == 0


def test_dead_letter_list_is_capped(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r, dead_max=5)
    push(r, *[b"junk %d" % i for i in range(12)])
    drain(worker)
    assert r.llen(KEYS.dead) == 5
    assert msgpack.unpackb(r.lindex(KEYS.dead, 0))["raw"] == b"junk 11"


def test_put_back_restores_queue_order(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    reqs = [request(f"t{i}") for i in range(3)]
    push(r, *reqs)
    taken = worker.queue.take(3, block=0)
    push(r, request("later"))
    worker.queue.put_back(taken)
    assert r.lrange(KEYS.queue, 0, 2) == [q.pack() for q in reqs]
    assert r.llen(KEYS.processing("w1")) == 0


def test_wake_tokens_are_kept_to_their_cap(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    r.rpush(KEYS.wake, *([1] * (WAKE_TOKENS_MAX + 20)))
    push(r, request("a"), request("b"))
    taken = worker.queue.take(1, block=0)
    worker.queue.put_back(taken)
    assert r.llen(KEYS.wake) == WAKE_TOKENS_MAX


def test_a_take_that_leaves_both_lanes_empty_clears_the_wake_tokens(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    push(r, request("a"), request("b"))
    r.rpush(KEYS.bulk, request("doc").pack())
    worker.queue.take(8, block=0)
    assert r.llen(KEYS.wake) == 1  # the bulk request still needs a worker to wake
    worker.bulk.take(8, block=0)
    assert r.llen(KEYS.wake) == 0  # every token stood for a request already taken
    push(r, request("c"))
    assert r.llen(KEYS.wake) == 1  # a later push leaves its own


def test_the_lane_keeps_redis_time_from_its_takes(r: fakeredis.FakeRedis) -> None:
    worker, _ = make_worker(r)
    worker.queue.take(1, block=0)
    seconds, micros = r.time()
    assert abs(worker.queue.now_ms() - (seconds * 1000 + micros // 1000)) < 200


def test_a_look_at_the_lanes_vouches_for_them_once_and_only_while_fresh() -> None:
    depths = Depths()
    depths.saw(0, 3)
    assert depths.consume() == (0, 3)
    assert depths.consume() == (None, None)  # used
    depths.saw(0, 0)
    depths.at -= 2 * FRESH_S
    assert depths.consume() == (None, None)  # stale: requests may have come since
