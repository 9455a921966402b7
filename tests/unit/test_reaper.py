"""The reaper on fakeredis: dead workers' requests go back in order, poison ones are given up."""

from __future__ import annotations

import fakeredis
import msgpack
import pytest

from embedq.protocol import Heartbeat, Keys, Request, unpack_reply
from embedq.worker.presence import Presence
from embedq.worker.reaper import Reaper
from embedq.workers import dead_workers, live_workers
from tests.support.requests import make_request

KEYS = Keys()


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def request(text: str) -> Request:
    return make_request(text)


def reaper(r: fakeredis.FakeRedis, max_attempts: int = 3) -> Reaper:
    return Reaper(r, KEYS, max_attempts=max_attempts, reply_ttl=60, dead_max=100, me="survivor")


def holding(r: fakeredis.FakeRedis, worker_id: str, *reqs: Request | bytes) -> None:
    """A worker that registered, took ``reqs`` and then died (no heartbeat)."""
    r.sadd(KEYS.workers, worker_id)
    r.rpush(KEYS.processing(worker_id), *(q.pack() if isinstance(q, Request) else q for q in reqs))


def test_dead_workers_requests_go_back_to_the_front_in_order(r: fakeredis.FakeRedis) -> None:
    a, b, waiting = request("a"), request("b"), request("waiting")
    holding(r, "dead-1", a, b)
    r.rpush(KEYS.queue, waiting.pack())
    report = reaper(r).reap_once()
    assert report.workers == ["dead-1"]
    assert (report.requeued, report.dead) == (2, 0)
    assert r.lrange(KEYS.queue, 0, -1) == [a.pack(), b.pack(), waiting.pack()]
    assert not r.exists(KEYS.processing("dead-1"))
    assert not r.sismember(KEYS.workers, "dead-1")
    assert int(r.get(KEYS.attempts(a.id))) == 1


def test_live_workers_are_left_alone(r: fakeredis.FakeRedis) -> None:
    a = request("a")
    holding(r, "alive", a)
    Presence(r, KEYS, "alive", ttl=5, info=lambda: Heartbeat(worker="alive", model="m")).beat()
    assert reaper(r).reap_once().workers == []
    assert r.llen(KEYS.processing("alive")) == 1
    assert list(live_workers(r, KEYS)) == ["alive"]
    assert dead_workers(r, KEYS) == []


def test_request_that_keeps_killing_workers_is_dead_lettered_with_an_error(r: fakeredis.FakeRedis) -> None:
    poison, other = request("poison"), request("other")
    for crash in range(3):
        holding(r, f"dead-{crash}", poison)
        reaper(r).reap_once()
        if crash < 2:
            assert r.lpop(KEYS.queue) == poison.pack()  # the next worker takes it ... and dies
    holding(r, "dead-x", other)
    reaper(r).reap_once()
    assert 0 < r.ttl(KEYS.reply(poison.id)) <= 60
    error = unpack_reply(r.lpop(KEYS.reply(poison.id)))
    assert error.code == "worker_died"
    assert "3 times" in (error.message or "")
    dead = [msgpack.unpackb(d) for d in r.lrange(KEYS.dead, 0, -1)]
    assert [(d["id"], d["code"]) for d in dead] == [(poison.id, "worker_died")]
    assert r.lrange(KEYS.queue, 0, -1) == [other.pack()]


def test_unparseable_leftovers_are_requeued_for_the_worker_to_dead_letter(r: fakeredis.FakeRedis) -> None:
    holding(r, "dead-1", b"\xc1junk")
    reaper(r, max_attempts=1).reap_once()
    assert r.lrange(KEYS.queue, 0, -1) == [b"\xc1junk"]


def test_a_worker_being_reaped_by_another_is_skipped(r: fakeredis.FakeRedis) -> None:
    holding(r, "dead-1", request("a"))
    r.set(KEYS.reaping("dead-1"), "other-reaper", px=30_000)
    assert reaper(r).reap_once().workers == []
    assert r.llen(KEYS.processing("dead-1")) == 1
