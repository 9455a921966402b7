"""The query cache's pure logic: entries, fingerprint agreement, lookups spread over a call, the
worker's writes and its refusal of a Redis that can only grow, and one encode per distinct text."""

from __future__ import annotations

import threading
import time
from typing import Any

import fakeredis
import numpy as np
import pytest
import redis

from embedq.breaker import Breaker
from embedq.cache import CacheLookup, Hits, agreed_model, check_kinds
from embedq.call import Call
from embedq.protocol import CacheEntry, Heartbeat, Keys, Reply, unpack_reply
from embedq.worker.cache import Cacheable, CacheWriter, cache_refusal
from embedq.worker.loop import Worker
from embedq.worker.settings import Settings, SettingsError
from tests.support.fake_encoder import FakeEncoder, fake_vector
from tests.support.requests import make_request

KEYS = Keys("embed:requests")


def beat(fingerprint: str, dim: int = 8) -> bytes:
    return Heartbeat(worker="w", fingerprint=fingerprint, dim=dim).pack()


def test_an_entry_round_trips_and_anything_else_is_refused() -> None:
    vector = fake_vector("query", "x")
    entry = CacheEntry.unpack(CacheEntry(vector, 7).pack(), dim=8)
    assert np.array_equal(entry.vector, vector) and entry.tokens == 7
    for bad in (b"", b"\xc1", CacheEntry(vector).pack()[:-3], CacheEntry(np.ones(4, np.float32)).pack()):
        with pytest.raises(ValueError):
            CacheEntry.unpack(bad, dim=8)
    with pytest.raises(ValueError, match="non-finite"):
        CacheEntry.unpack(CacheEntry(np.full(8, np.nan, np.float32)).pack(), dim=8)


def test_the_cache_is_read_only_while_all_live_workers_agree() -> None:
    assert agreed_model([beat("a"), beat("a"), None]) == ("a", 8)
    assert agreed_model([beat("a"), beat("b")]) is None  # a rolling upgrade
    assert agreed_model([beat("")]) is None  # an encoder without a fingerprint
    assert agreed_model([]) is None
    assert agreed_model([b"garbage", beat("a")]) == ("a", 8)


def test_cache_keys_depend_on_fingerprint_kind_and_text_and_never_hold_the_text() -> None:
    key = KEYS.cache_entry("fp1", "query", "비밀 질문")
    assert key.startswith("embed:cache:fp1:query:") and "비밀" not in key
    assert key != KEYS.cache_entry("fp2", "query", "비밀 질문")
    assert key != KEYS.cache_entry("fp1", "passage", "비밀 질문")
    with pytest.raises(ValueError):
        check_kinds(["query", "questions"])


def test_a_lookup_spreads_hits_to_duplicates_and_counts_them() -> None:
    r = fakeredis.FakeRedis()
    lookup = CacheLookup(r, KEYS)
    lookup.learn([beat("fp")])
    r.set(KEYS.cache_entry("fp", "query", "a"), CacheEntry(fake_vector("query", "a"), 3).pack())
    planned = lookup.plan("query", ["a", "b", "a"])
    assert planned is not None
    keys, firsts = planned
    assert firsts == [0, 1] and len(keys) == 2
    hits = lookup.found(["a", "b", "a"], firsts, r.mget(keys))
    assert sorted(hits.vectors) == [0, 2] and hits.tokens == {0: 3, 2: 3}
    assert lookup.stats() == {"hits": 2, "misses": 1, "hit_ratio": 0.6667, "errors": 0, "skipped": 0}
    assert lookup.plan("passage", ["a"]) is None  # passages are not cached by default
    assert r.keys(f"{KEYS.namespace}:cache:stats*") == []  # counts stay in the client


def test_a_call_sends_only_the_misses_and_puts_every_row_back_in_place() -> None:
    call = Call(["a", "b", "c", "d"], "query", keys=KEYS, max_batch=4, timeout=5.0)
    cached = Hits({1: fake_vector("query", "b"), 3: fake_vector("query", "d")}, {1: 4, 3: 5})
    call.use_cached(cached)
    assert call.requests == [] and call.unsent == 2  # built only when sent
    call.payloads(now_ms=1000)
    assert call.chunks == [[0, 2]] and list(call.requests[0].texts) == ["a", "c"]
    sent = np.stack([fake_vector("query", "a"), fake_vector("query", "c")])
    reply = Reply(id=call.requests[0].id, vectors=sent, truncated=(1,), tokens=(2, 6))
    call.accept(KEYS.reply(call.requests[0].id), reply.pack())
    got = call.result()
    for i, text in enumerate("abcd"):
        assert np.array_equal(got[i], fake_vector("query", text))
    assert call.truncated == [2] and call.tokens == 2 + 6 + 4 + 5


def test_a_call_answered_wholly_by_the_cache_sends_nothing() -> None:
    call = Call(["a"], "query", keys=KEYS, max_batch=8, timeout=5.0)
    call.use_cached(Hits({0: fake_vector("query", "a")}, {0: 1}))
    assert call.requests == [] and call.done and call.unsent == 0
    assert np.array_equal(call.result()[0], fake_vector("query", "a"))


@pytest.mark.parametrize(
    ("policy", "maxmemory", "same", "refused"),
    [
        ("noeviction", 0, True, True),
        ("noeviction", 1 << 20, True, True),
        ("noeviction", 0, False, True),
        ("noeviction", 1 << 20, False, False),
        ("allkeys-lru", 0, False, False),
        ("allkeys-lru", 1 << 20, True, False),
    ],
)
def test_a_cache_redis_that_can_only_grow_is_refused(
    policy: str, maxmemory: int, same: bool, refused: bool
) -> None:
    assert (cache_refusal(policy, maxmemory, same) is not None) is refused


def test_the_writer_stores_cached_kinds_only_with_an_expiry() -> None:
    r = fakeredis.FakeRedis()
    writer = CacheWriter(r, KEYS, "fp", kinds=("query",), ttl_s=60)
    items = [
        Cacheable("query", "q", fake_vector("query", "q"), 3),
        Cacheable("passage", "p", fake_vector("passage", "p"), 4),
    ]
    assert writer.store(items) == 1
    assert writer.drain()
    key = KEYS.cache_entry("fp", "query", "q")
    assert 0 < r.pttl(key) <= 60_000
    assert CacheEntry.unpack(r.get(key), 8).tokens == 3
    assert not r.exists(KEYS.cache_entry("fp", "passage", "p"))
    assert writer.stats()["writes"] == 1


def test_settings_check_the_cached_kinds() -> None:
    assert Settings(cache_kinds="query, passage").cached_kinds == ("query", "passage")
    with pytest.raises(SettingsError, match="EMBED_CACHE_KINDS"):
        Settings(cache_kinds="questions")
    with pytest.raises(SettingsError, match="EMBED_CACHE_TTL"):
        Settings(cache_ttl=0)


def test_a_batch_encodes_each_distinct_text_once_and_caches_whole_texts() -> None:
    r = fakeredis.FakeRedis()
    encoder = FakeEncoder()
    writer = CacheWriter(r, KEYS, "fp", kinds=("query",), ttl_s=60)
    worker = Worker(Settings(worker_id="w1", batch_wait_ms=0), encoder, r, cache=writer)
    a, b = make_request("same", "same", "other"), make_request("same")
    r.rpush(KEYS.queue, a.pack(), b.pack())
    while worker.serve_once(block=0.01):
        pass
    assert writer.drain()
    assert encoder.calls == [2]  # four texts, two distinct
    reply = unpack_reply(r.lpop(KEYS.reply(a.id)))
    assert reply.vectors is not None
    assert np.array_equal(reply.vectors[0], reply.vectors[1])
    assert np.array_equal(reply.vectors[0], fake_vector("query", "same"))
    assert r.exists(KEYS.cache_entry("fp", "query", "same"), KEYS.cache_entry("fp", "query", "other")) == 2


def test_the_breaker_opens_after_failures_in_a_row_and_tries_again_after_a_doubling_pause() -> None:
    now = [0.0]
    breaker = Breaker(after=3, pause_s=2.0, max_pause_s=5.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert breaker.closed()
    breaker.failure()
    assert not breaker.closed() and breaker.opened == 1
    now[0] = 2.0
    assert breaker.closed()  # one trial
    breaker.failure()  # it failed: a longer pause at once
    assert not breaker.closed()
    now[0] = 5.9
    assert not breaker.closed()
    now[0] = 6.0
    assert breaker.closed()
    breaker.success()
    breaker.failure()
    assert breaker.closed() and breaker.pause == 2.0


def test_a_lookup_on_a_failing_cache_gives_no_hits_and_stops_trying_for_a_while() -> None:
    class Down:
        calls = 0

        def mget(self, keys: list[str]) -> list[bytes | None]:
            Down.calls += 1
            raise redis.exceptions.ConnectionError("down")

    queue = fakeredis.FakeRedis()
    queue.sadd(KEYS.workers, "w1")
    queue.set(KEYS.heartbeat("w1"), beat("fp"))
    lookup = CacheLookup(Down(), KEYS)
    for _ in range(10):
        assert len(lookup.lookup("query", ["q"], queue)) == 0
    assert Down.calls == 3 and lookup.stats()["errors"] == 3 and lookup.stats()["skipped"] == 7


def test_the_writer_never_blocks_the_batch_thread_on_a_stalled_cache() -> None:
    release = threading.Event()

    class Stalled:
        def pipeline(self, transaction: bool = False) -> Any:
            return self

        def set(self, *args: Any, **kwargs: Any) -> None:
            pass

        def execute(self) -> None:
            release.wait(10)

    writer = CacheWriter(Stalled(), KEYS, "fp", kinds=("query",), ttl_s=60)  # type: ignore[arg-type]
    item = [Cacheable("query", "q", fake_vector("query", "q"), 3)]
    started = time.perf_counter()
    handed = sum(writer.store(item) for _ in range(200))
    assert time.perf_counter() - started < 0.5
    assert handed < 200 and writer.stats()["dropped"] == 200 - handed  # a full queue drops, never waits
    release.set()
    assert writer.drain()
    writer.close()
