"""Micro-batching with real parts: one encode at a time, never over max-batch, real batches
under concurrent producers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedq import Call, EmbeddingClient
from embedq.worker.encoder import SentenceTransformerEncoder
from embedq.worker.loop import Worker
from embedq.worker.settings import Settings
from tests.support.clients import client_for
from tests.support.fake_encoder import CallRecorder
from tests.support.servers import RedisServer, WorkerProcess, bundled_model_path
from tests.support.vectors import RECORD_QUERIES, ReferenceModel, cosines

pytestmark = pytest.mark.slow

PRODUCERS = 10
REQUESTS_EACH = 12


class RecordingEncoder(SentenceTransformerEncoder):
    """The real encoder, recording every call's size and whether two ever overlapped."""

    def __init__(self) -> None:
        super().__init__(bundled_model_path(), threads=2, query_prefix="query: ", passage_prefix="passage: ")
        self.recorder = CallRecorder()

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        with self.recorder.recording(len(texts)):
            return super().encode(texts, kinds)


def hammer(client: EmbeddingClient, producers: int, each: int) -> list[Call]:
    """``producers`` threads each sending ``each`` requests one after another."""

    def producer(p: int) -> list[Call]:
        calls = []
        for i in range(each):
            call = client.call([f"{RECORD_QUERIES[(p + i) % 5]} #{p}-{i}"])
            client.send(call)
            client.wait(call)
            calls.append(call)
        return calls

    with ThreadPoolExecutor(producers) as pool:
        return [c for calls in pool.map(producer, range(producers)) for c in calls]


def test_worker_process_forms_batches_under_concurrent_producers(
    redis_server: RedisServer, e5_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    client = client_for(redis_server, e5_worker)
    calls = hammer(client, PRODUCERS, REQUESTS_EACH)
    sizes = [c.replies[0].batch_size for c in calls if c.replies[0] is not None]
    assert len(sizes) == PRODUCERS * REQUESTS_EACH
    assert max(sizes) <= 8
    assert np.mean(sizes) > 2, sizes  # 10 producers at once: batches, not one at a time
    texts = [c.requests[0].texts[0] for c in calls[:20]]
    got = np.vstack([c.result() for c in calls[:20]])
    assert cosines(got, in_process.encode(texts, "query: ")).min() >= 0.99999


def test_worker_loop_never_encodes_twice_at_once_or_over_max_batch(redis_server: RedisServer) -> None:
    encoder = RecordingEncoder()
    settings = Settings(redis_url=redis_server.url, queue="it-loop:requests", worker_id="loop-under-test")
    worker = Worker(settings, encoder, redis_server.client())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        client = EmbeddingClient.from_url(redis_server.url, queue=settings.queue, timeout=20)
        # single queries from 10 producers, and multi-text calls that must be split and packed
        calls = hammer(client, PRODUCERS, REQUESTS_EACH)
        docs = client.embed_documents([f"문서 {i}" for i in range(30)])
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    sizes = encoder.recorder.calls
    assert encoder.recorder.max_active == 1
    assert max(sizes) <= 8
    assert sum(sizes) == len(calls) + 30  # every text encoded exactly once
    assert max(sizes) > 1
    assert len(docs) == 30
    assert worker.counts["ok"] == len(calls)  # the questions, in the online lane
    assert worker.counts["bulk_texts"] == 30  # the documents, behind them
