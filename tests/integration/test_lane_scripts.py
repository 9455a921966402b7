"""The lane's Lua scripts on a real redis-server (fakeredis has no cmsgpack): what only Redis can run."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
import redis

from embedq.protocol import Keys, too_large_message
from tests.support.servers import RedisServer
from tests.support.worker_harness import make_worker, push, request

KEYS = Keys()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.delete(*(client.keys("embed:*") or ["embed:none"]))
    yield client
    client.delete(*(client.keys("embed:*") or ["embed:none"]))


def test_an_oversized_request_is_dead_lettered_in_redis_with_the_one_message(r: redis.Redis) -> None:
    worker, _ = make_worker(r, max_request_bytes=2000)
    big = request("x" * 40, *(["y" * 40] * 7))
    padded = msgpack.packb({**msgpack.unpackb(big.pack()), "pad": "z" * 3000})  # a field too many bytes
    push(r, padded)
    taken = worker.queue.take(8, block=0)
    assert len(taken) == 1 and not taken[0].held and taken[0].rejected is not None
    expected = too_large_message(len(padded), 2000)
    assert taken[0].rejected.message == expected and taken[0].rejected.request_id == big.id
    dead = msgpack.unpackb(r.lindex(KEYS.dead, 0), unicode_errors="replace")  # raw: the first bytes
    assert dead["code"] == "request_too_large" and dead["reason"] == expected
    assert r.llen(KEYS.processing("w1")) == 0  # never held: nothing to put back
