"""The query cache (``EMBED_CACHE_URL``) with a real worker, the bundled model and two real Redis
servers: a hit is the model's own vector and skips the queue; a new model never meets old
vectors; a cache that fails or lies costs nothing but the shortcut; the worker refuses a cache
Redis that can only grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from embedq import AsyncEmbeddingClient, EmbeddingClient
from embedq.protocol import CacheEntry, Keys
from tests.support.heartbeats import fresh_heartbeats
from tests.support.servers import ROOT, RedisServer, WorkerProcess, bundled_model_path, embedq, wait_until
from tests.support.vectors import RECORD_QUERIES, ReferenceModel

pytestmark = pytest.mark.slow

QUEUE = "cache-embed:requests"
KEYS = Keys(QUEUE)


@pytest.fixture(scope="module")
def cache_server() -> Iterator[RedisServer]:
    server = RedisServer()
    admin = server.client()
    admin.config_set("maxmemory", "64mb")
    admin.config_set("maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cached_worker(redis_server: RedisServer, cache_server: RedisServer) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(redis_server.url, QUEUE, {"EMBED_CACHE_URL": cache_server.url})
    yield worker
    worker.terminate()


def served(redis_server: RedisServer, queue: str = QUEUE) -> int:
    """Texts the workers of ``queue`` have answered (their ok counters, from the heartbeats)."""
    report = embedq("status", "--json", "--redis-url", redis_server.url, "--queue", queue)
    assert report.returncode == 0, report.stderr
    return sum(int(w["counts"].get("ok", 0)) for w in json.loads(report.stdout)["workers"])


def hit(client: EmbeddingClient, text: str) -> bool:
    """Embed ``text``; True when the cache answered it (no request was sent)."""
    call = client.call([text])
    client.embed_call(call)
    return not call.requests


def test_a_repeated_question_is_answered_from_the_cache_with_the_models_vector(
    redis_server: RedisServer,
    cache_server: RedisServer,
    cached_worker: WorkerProcess,
    in_process: ReferenceModel,
) -> None:
    assert "cache=query ttl=86400s" in cached_worker.log()
    with EmbeddingClient.from_url(redis_server.url, queue=QUEUE, cache_url=cache_server.url) as client:
        question = f"{RECORD_QUERIES[0]} {time.time()}"
        miss = client.call([question])
        first = client.embed_call(miss)  # through the queue, then stored
        assert len(miss.requests) == 1 and miss.tokens > 0
        wait_until(lambda: cache_server.client().dbsize() > 0, 5, "the worker to store the vector")
        fresh_heartbeats(redis_server.client(), KEYS)  # its counts include the miss
        before = served(redis_server)
        call = client.call([question, question], "query")
        again = client.embed_call(call)
        assert call.requests == []  # nothing was sent
        fresh_heartbeats(redis_server.client(), KEYS)
        assert served(redis_server) == before
        expected = in_process.encode([question])
        np.testing.assert_allclose(first, expected, atol=1e-5)
        assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[0])
        assert call.tokens == 2 * miss.tokens
        assert client.cache is not None
        assert client.cache.stats()["hits"] == 2 and client.cache.stats()["misses"] == 1


def test_writes_reach_status_and_hits_stay_with_each_producer(
    redis_server: RedisServer, cache_server: RedisServer, cached_worker: WorkerProcess
) -> None:
    with EmbeddingClient.from_url(redis_server.url, queue=QUEUE, cache_url=cache_server.url) as client:
        text = f"status {time.time()}"
        client.embed([text])
        wait_until(lambda: hit(client, text), 5, "a hit")
        assert client.cache is not None and client.cache.stats()["hits"] >= 1
    assert not cache_server.client().keys("*stats*")  # producers write nothing to the cache Redis

    def reported() -> bool:
        out = embedq("status", "--redis-url", redis_server.url, "--queue", QUEUE).stdout
        return "query cache (query, ttl 86400s):" in out and " 0 vectors stored" not in out

    wait_until(reported, 15, "status to show the cache's writes", interval=0.5)
    out = embedq("status", "--redis-url", redis_server.url, "--queue", QUEUE).stdout
    assert "vectors stored" in out and "fingerprint " in out


async def test_the_asyncio_client_reads_the_cache_too(
    redis_server: RedisServer, cache_server: RedisServer, cached_worker: WorkerProcess
) -> None:
    async with AsyncEmbeddingClient.from_url(
        redis_server.url, queue=QUEUE, cache_url=cache_server.url
    ) as client:
        text = f"async {time.time()}"
        first = await client.embed([text])
        entry = KEYS.cache_entry(fingerprint(redis_server), "query", text)
        wait_until(lambda: cache_server.client().exists(entry), 5, "the entry")
        call = client.call([text])
        again = await client.embed_call(call)
        assert call.requests == [] and np.array_equal(first, again)


def fingerprint(redis_server: RedisServer) -> str:
    from embedq.cache import agreed_model

    admin = redis_server.client()
    ids = admin.smembers(KEYS.workers)
    model = agreed_model(admin.mget([KEYS.heartbeat(i.decode()) for i in ids]))
    assert model is not None
    return model[0]


def test_passages_are_not_cached_by_default(
    redis_server: RedisServer, cache_server: RedisServer, cached_worker: WorkerProcess
) -> None:
    with EmbeddingClient.from_url(redis_server.url, queue=QUEUE, cache_url=cache_server.url) as client:
        text = f"a document {time.time()}"
        client.embed([text], "passage")
        # a barrier: the worker caches in order, so once a later query's entry is there, the
        # passage's would be too
        marker = f"a later question {time.time()}"
        client.embed([marker], "query")
        cache = cache_server.client()
        model = fingerprint(redis_server)
        wait_until(lambda: cache.exists(KEYS.cache_entry(model, "query", marker)), 10, "the query's entry")
        assert not cache.exists(KEYS.cache_entry(model, "passage", text))
        call = client.call([text], "passage")
        client.embed_call(call)
        assert len(call.requests) == 1


def test_a_garbage_entry_is_ignored_and_the_queue_answers(
    redis_server: RedisServer,
    cache_server: RedisServer,
    cached_worker: WorkerProcess,
    in_process: ReferenceModel,
) -> None:
    text = f"poisoned {time.time()}"
    fp = fingerprint(redis_server)
    cache_server.client().set(KEYS.cache_entry(fp, "query", text), b"\x92not an entry")
    short = CacheEntry(np.ones(3, np.float32)).pack()  # the wrong dimension
    other = f"short {time.time()}"
    cache_server.client().set(KEYS.cache_entry(fp, "query", other), short)
    with EmbeddingClient.from_url(redis_server.url, queue=QUEUE, cache_url=cache_server.url) as client:
        call = client.call([text, other])
        got = client.embed_call(call)
        assert len(call.requests) == 1  # both went through the queue
        np.testing.assert_allclose(got, in_process.encode([text, other]), atol=1e-5)
        assert client.cache is not None and client.cache.errors >= 2


def test_a_dead_cache_costs_only_the_shortcut(
    redis_server: RedisServer, cached_worker: WorkerProcess
) -> None:
    gone = RedisServer()
    url = gone.url
    gone.stop()
    with EmbeddingClient.from_url(redis_server.url, queue=QUEUE, cache_url=url) as client:
        assert client.embed(["the cache is down"]).shape[0] == 1
        assert client.cache is not None and client.cache.errors >= 1


def test_a_new_model_never_answers_with_old_vectors(
    redis_server: RedisServer, cache_server: RedisServer, in_process: ReferenceModel
) -> None:
    """Same queue, same cache: a worker whose prefix differs has another fingerprint, so the
    first model's cached vector is not served once it is the one answering."""
    queue = "cache-switch:requests"
    text = f"switch {time.time()}"
    env = {"EMBED_CACHE_URL": cache_server.url}
    old = WorkerProcess(redis_server.url, queue, env)
    with EmbeddingClient.from_url(redis_server.url, queue=queue, cache_url=cache_server.url) as client:
        try:
            client.embed([text])
            wait_until(lambda: hit(client, text), 5, "a hit")
        finally:
            old.terminate()
        new = WorkerProcess(redis_server.url, queue, {**env, "EMBED_QUERY_PREFIX": "query: "})
        try:
            redis_server.client().delete(Keys(queue).heartbeat(old.worker_id))
            assert client.cache is not None
            client.cache.read_at = -1e9  # read the fingerprint now, not in 2 s
            call = client.call([text])
            got = client.embed_call(call)
            assert len(call.requests) == 1
            np.testing.assert_allclose(got, in_process.encode([text], prefix="query: "), atol=1e-5)
        finally:
            new.terminate()


def test_the_worker_refuses_the_queues_redis_under_noeviction_as_its_cache(redis_server: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "embedq.worker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "REDIS_URL": redis_server.url,
            "EMBED_QUEUE": "cache-refused:requests",
            "EMBED_CACHE_URL": redis_server.url,
            "EMBEDDING_MODEL": bundled_model_path(),
        },
    )
    assert result.returncode == 2
    assert "queue's own Redis, which runs maxmemory-policy noeviction" in result.stderr
