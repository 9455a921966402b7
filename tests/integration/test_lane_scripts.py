"""The lane's Lua scripts on a real redis-server (fakeredis has no cmsgpack): what only Redis can run."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
import redis

from embedq.protocol import Keys, too_large_message
from tests.support.servers import RedisServer
from tests.support.worker_harness import make_worker, push, reply_of, request

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


def test_the_wait_and_the_take_go_together_and_survive_a_script_flush(r: redis.Redis) -> None:
    worker, _ = make_worker(r)
    first = request("first")
    push(r, first)
    taken = worker.queue.take(8, block=1.0)  # the token is there: the pipelined take runs at once
    assert [t.request.id for t in taken if t.request] == [first.id]
    assert r.llen(KEYS.processing("w1")) == 1 and r.llen(KEYS.wake) == 0
    r.script_flush()  # a restarted Redis holds no scripts: the take is sent again, loading it
    second = request("second")
    push(r, second)
    taken = worker.queue.take(8, block=1.0)
    assert [t.request.id for t in taken if t.request] == [second.id]
    r.rpush(KEYS.queue, request("no token").pack())  # pushed without a token: found when the wait ends
    assert len(worker.queue.take(8, block=0.2)) == 1


def test_a_request_over_the_cap_taken_with_an_answer_is_dead_lettered_and_refused(r: redis.Redis) -> None:
    worker, encoder = make_worker(r, max_request_bytes=2000)
    big = request("x" * 40)
    padded = msgpack.packb({**msgpack.unpackb(big.pack()), "pad": "z" * 3000})
    original = encoder.encode

    def encode_and_push(texts, kinds):  # the oversized one arrives during the first encode
        push(r, padded)
        return original(texts, kinds)

    encoder.encode = encode_and_push  # type: ignore[method-assign]
    push(r, request("first"))
    assert worker.serve_once(block=0) == 1  # its finish took the oversized one, without its body
    assert r.llen(KEYS.queue) == 0 and r.llen(KEYS.processing("w1")) == 0
    assert msgpack.unpackb(r.lindex(KEYS.dead, 0), unicode_errors="replace")["code"] == "request_too_large"
    encoder.encode = original  # type: ignore[method-assign]
    assert worker.serve_once(block=0) == 1  # and answers it with the reason
    reply = reply_of(r, big)
    assert reply.code == "request_too_large" and reply.message == too_large_message(len(padded), 2000)
