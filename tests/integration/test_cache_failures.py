"""A cache that fails the slow way never costs a call (issue 21, finding 4): a stalled cache (it
accepts and never answers) and a blackholed one (connects never complete), on the producer's
side and on the worker's, with real sockets, a real Redis and real worker processes. Before,
every call with an unreachable cache failed after 5 s, and every batch of a worker with one
stalled 2 s."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from embedq import EmbeddingClient
from embedq.protocol import Heartbeat, Keys
from tests.support.dead_ends import Blackhole, Stalled
from tests.support.servers import RedisServer, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

QUEUE = "cache-fail:requests"
FAKE = {
    "EMBED_ENCODER": "tests.support.fake_encoder:build",
    "EMBED_TEST_DIM": "8",
    "EMBED_BATCH_WAIT_MS": "0",
}


@pytest.fixture(params=["stalled", "blackholed"])
def dead_end(request: pytest.FixtureRequest) -> Iterator[str]:
    end = Stalled() if request.param == "stalled" else Blackhole()
    if isinstance(end, Blackhole):
        assert end.hangs(), "the blackhole answered: this kernel drops no SYNs"
    yield end.url
    end.close()


def lone_calls(client: EmbeddingClient, n: int, tag: str) -> list[float]:
    """Seconds of ``n`` lone questions, each a new text (a cache could only miss)."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        assert client.embed([f"{tag} {i} {time.time()}"]).shape == (1, 8)
        out.append(time.perf_counter() - started)
    return out


def test_a_producer_with_a_dead_end_cache_answers_as_fast_as_one_without(
    redis_server: RedisServer, dead_end: str
) -> None:
    worker = WorkerProcess(redis_server.url, QUEUE, FAKE)
    try:
        # a call's timeout shorter than a stalled connect used to be: the lookup must not eat it
        plain = EmbeddingClient.from_url(redis_server.url, queue=QUEUE, timeout=1.0)
        cached = EmbeddingClient.from_url(redis_server.url, queue=QUEUE, timeout=1.0, cache_url=dead_end)
        lone_calls(plain, 3, "warm")
        with_cache, without = [], []
        for _ in range(4):  # interleaved: the machine's noise falls on both alike
            with_cache += lone_calls(cached, 10, "cached")
            without += lone_calls(plain, 10, "plain")
        assert cached.cache is not None
        stats = cached.cache.stats()
        median, plain_median = statistics.median(with_cache), statistics.median(without)
        print(f"\nmedian {median * 1000:.1f} ms with the dead-end cache, {plain_median * 1000:.1f} ms "
              f"without; worst {max(with_cache) * 1000:.0f} ms; {stats}")  # fmt: skip
        assert stats["errors"] <= 4 and stats["skipped"] >= 30  # the breaker left it alone
        assert max(with_cache) < 0.9  # one short cache timeout at most, never the call's 1 s
        assert median < plain_median + 0.02
    finally:
        assert worker.terminate() == 0, worker.log()


def test_a_worker_with_a_dead_end_cache_answers_every_batch_without_waiting_on_it(
    redis_server: RedisServer, dead_end: str
) -> None:
    queue = "cache-fail-worker:requests"
    worker = WorkerProcess(redis_server.url, queue, {**FAKE, "EMBED_CACHE_URL": dead_end})
    try:
        with EmbeddingClient.from_url(redis_server.url, queue=queue, timeout=2.0) as client:
            took = lone_calls(client, 30, "question")
        print(f"\nworker with a {dead_end} cache: median {statistics.median(took) * 1000:.1f} ms, "
              f"worst {max(took) * 1000:.0f} ms")  # fmt: skip
        assert max(took) < 0.5  # a cache write used to hold each batch for its socket timeout
        keys = Keys(queue)

        def counted() -> bool:
            raw = redis_server.client().get(keys.heartbeat(worker.worker_id))
            cache = Heartbeat.unpack(raw).cache if raw else None
            return bool(cache) and cache["errors"] + cache["dropped"] >= 20

        wait_until(counted, 15, "the heartbeat to count the failed and dropped cache writes")
        assert "query cache write failed" in worker.log()
    finally:
        assert worker.terminate() == 0, worker.log()
