"""Production scale on real Redis and real worker processes: long calls complete at their default
timeout whatever an encode costs, questions go first and keep being answered while documents are
embedded, a batch never holds the encoder long, the background still finishes.

The workers run a model-free encoder whose encode time has a real model's shape (a base cost plus
a cost per text and padded token, ``EMBED_TEST_MS_PER_TOKEN``), about a quarter of
multilingual-e5-large's on 2 threads, against producers whose timeout is halved, at the default
batch budget (500 ms): a question costs ~90 ms, a 100-word passage ~560 ms (over the budget: it
goes alone), a batch of eight passages 4.5 s (nearly two timeouts).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embedq import EmbeddingClient, EmbedqError
from embedq.bulk import BulkOptions, run_bulk
from embedq.protocol import Keys
from embedq.workers import live_workers
from tests.support.fake_encoder import fake_vector
from tests.support.heartbeats import fresh_heartbeats
from tests.support.servers import RedisServer, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

TIMEOUT = 2.5
"""The producers' timeout (the default is 5 s)."""
SHAPED = {
    "EMBED_ENCODER": "tests.support.fake_encoder:build",
    "EMBED_TEST_DIM": "16",
    "EMBED_TEST_ENCODE_DELAY": "0.04",  # the base cost of an encode
    "EMBED_TEST_MS_PER_TOKEN": "5.0",  # per text and padded token
}


def passage(i: int, words: int = 100) -> str:
    return " ".join(f"w{i}-{j}" for j in range(words))


@pytest.fixture
def shaped_worker(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(redis_server.url, f"scale-{request.node.name[:40]}:requests", SHAPED)
    yield worker
    assert worker.alive, worker.log()
    assert worker.terminate() == 0, worker.log()


class Chatbot:
    """Questions one at a time, ``every`` seconds apart, until stopped: their latencies and errors."""

    def __init__(self, client: EmbeddingClient, every: float = 0.25) -> None:
        self.client, self.every = client, every
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            text = f"question {n} {time.monotonic()}"
            started = time.monotonic()
            try:
                got = self.client.embed_query(text)
                assert np.allclose(got, fake_vector("query", text, 16), atol=1e-6)
                self.latencies.append(time.monotonic() - started)
            except EmbedqError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            n += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Chatbot:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def check_documents(got: np.ndarray, texts: list[str]) -> None:
    expected = np.stack([fake_vector("passage", t, 16) for t in texts])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_long_call_completes_at_its_timeout_while_every_question_is_answered(
    redis_server: RedisServer, shaped_worker: WorkerProcess
) -> None:
    client = EmbeddingClient.from_url(redis_server.url, queue=shaped_worker.queue, timeout=TIMEOUT)
    texts = [passage(i) for i in range(24)]  # ~13 s of encoding: five timeouts
    with Chatbot(client) as chatbot:
        wait_until(lambda: len(chatbot.latencies) >= 3, 10, "a few questions at idle first")
        call = client.call(texts, "passage")
        got = client.embed_call(call)
    check_documents(got, texts)
    assert chatbot.errors == [] and len(chatbot.latencies) > 20
    assert call.lane == "bulk" and max(len(r.texts) for r in call.requests) == 1  # sized to the budget
    # a question waited for at most the batch in hand (one passage, ~560 ms) and its own encode
    assert max(chatbot.latencies) < TIMEOUT / 2, sorted(chatbot.latencies)[-5:]


def test_two_ingestions_at_once_share_the_fleet_and_both_finish(
    redis_server: RedisServer, shaped_worker: WorkerProcess
) -> None:
    client = EmbeddingClient.from_url(redis_server.url, queue=shaped_worker.queue, timeout=TIMEOUT)
    sets = [[passage(i, 20 + 20 * k) for i in range(16)] for k in range(2)]
    with Chatbot(client) as chatbot, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda texts: client.embed(texts, "passage"), sets))
    for got, texts in zip(results, sets, strict=True):
        check_documents(got, texts)
    assert chatbot.errors == []


def test_a_request_over_the_budget_from_an_old_producer_is_sliced_between_questions(
    redis_server: RedisServer, shaped_worker: WorkerProcess
) -> None:
    client = EmbeddingClient.from_url(redis_server.url, queue=shaped_worker.queue, timeout=TIMEOUT)
    slow = EmbeddingClient.from_url(redis_server.url, queue=shaped_worker.queue, timeout=20)
    texts = [passage(i) for i in range(8)]  # one request of eight passages: 4.5 s as one batch
    big = slow.call(texts, "passage")
    big.flow.per_text_ms = 1.0  # as a producer that sizes nothing: all eight in one request
    with Chatbot(client, every=0.1) as chatbot:
        wait_until(lambda: len(chatbot.latencies) >= 3, 10, "a few questions at idle first")
        got = slow.embed_call(big)
    check_documents(got, texts)
    assert len(big.requests) == 1 and big.replies[0] is not None and big.replies[0].batch_size == 8
    assert chatbot.errors == [] and max(chatbot.latencies) < TIMEOUT / 2, sorted(chatbot.latencies)[-5:]


def test_the_bulk_job_runs_beside_the_questions(
    tmp_path: Path, redis_server: RedisServer, shaped_worker: WorkerProcess
) -> None:
    import json

    texts = [passage(i, 30) for i in range(24)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    client = EmbeddingClient.from_url(redis_server.url, queue=shaped_worker.queue, timeout=TIMEOUT)
    with Chatbot(client) as chatbot:
        summary = run_bulk(
            source, tmp_path / "out", BulkOptions(queue=shaped_worker.queue), redis_server.client()
        )
    assert summary["rows"] == 24
    check_documents(np.load(tmp_path / "out" / "vectors.npy"), texts)
    assert chatbot.errors == [] and max(chatbot.latencies) < TIMEOUT / 2, sorted(chatbot.latencies)[-5:]


def test_a_fixed_cost_model_no_longer_fails_a_400_text_call_on_two_workers(redis_server: RedisServer) -> None:
    """The reported failure: every batch 250 ms, two workers, ``embed_documents`` of 400 texts at a
    5 s timeout answered 0 of 20 calls; the workers skipped requests as too late again and again."""
    queue = "scale-fixed:requests"
    env = {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_ENCODE_DELAY": "0.25"}
    workers = [
        WorkerProcess(redis_server.url, queue, {**env, "EMBED_WORKER_ID": f"fixed-{i}"}) for i in range(2)
    ]
    try:
        client = EmbeddingClient.from_url(redis_server.url, queue=queue)  # the default 5 s
        texts = [f"문서 {i}" for i in range(400)]
        got = client.embed_documents(texts)
        assert len(got) == 400
        fresh_heartbeats(redis_server.client(), Keys(queue), workers=2)
        beats = live_workers(redis_server.client(), Keys(queue)).values()
        assert sum(b.counts.get("bulk_late", 0) + b.counts.get("bulk_expired", 0) for b in beats) == 0
    finally:
        for w in workers:
            assert w.terminate() == 0, w.log()


def test_a_worker_busy_for_seconds_is_not_taken_for_dead(redis_server: RedisServer) -> None:
    """A batch of a large model takes seconds; the heartbeat comes from a thread of its own, so
    the other workers' reaper leaves the busy one and its requests alone."""
    queue = "scale-busy:requests"
    env = {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_DIM": "16"}
    busy = WorkerProcess(
        redis_server.url, queue, {**env, "EMBED_WORKER_ID": "busy", "EMBED_TEST_ENCODE_DELAY": "3"}
    )
    watcher = WorkerProcess(redis_server.url, queue, {**env, "EMBED_WORKER_ID": "watcher"})
    try:
        admin = redis_server.client()
        client = EmbeddingClient.from_url(redis_server.url, queue=queue, timeout=10)
        call = client.call(["오래 걸리는 문서"], "passage")
        watcher.proc.send_signal(signal.SIGSTOP)  # so the busy worker takes it
        client.send(call)
        wait_until(lambda: admin.llen(Keys(queue).bulk_processing("busy")) == 1, 10, "the busy worker's take")
        watcher.proc.send_signal(signal.SIGCONT)
        started = time.monotonic()
        got = client.wait(call)
        assert time.monotonic() - started > 1.5  # the encode took its seconds, there
        check_documents(got, ["오래 걸리는 문서"])
        assert call.replies[0] is not None and call.replies[0].worker == "busy"
        assert "is gone" not in watcher.log(), watcher.log()
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
        for w in (busy, watcher):
            assert w.terminate() == 0, w.log()
