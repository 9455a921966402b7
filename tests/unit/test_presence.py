"""The heartbeat writer (worker/presence.py): register, beat with what the worker reports, leave."""

from __future__ import annotations

import fakeredis
import pytest

from embedq.protocol import Heartbeat
from tests.support.worker_harness import KEYS, make_worker


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


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


def test_a_beat_carries_the_redis_trouble_the_worker_is_waiting_out(r: fakeredis.FakeRedis) -> None:
    import redis as redis_py

    from embedq.worker.presence import Presence
    from embedq.worker.redis_errors import RedisGuard

    guard = RedisGuard()
    presence = Presence(r, KEYS, "w9", ttl=2.0, guard=guard)
    guard.failed(redis_py.exceptions.OutOfMemoryError("OOM command not allowed"), "serving")
    presence.beat()
    beat = Heartbeat.unpack(r.get(KEYS.heartbeat("w9")))
    assert beat.redis_trouble is not None and beat.redis_trouble["code"] == "OOM"
    assert beat.pid and beat.host
    guard.recovered()
    presence.beat()
    again = Heartbeat.unpack(r.get(KEYS.heartbeat("w9")))
    assert again.redis_trouble is None and again.started_ms and again.beat_ms
