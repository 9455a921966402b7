"""End to end through a real redis-server and real worker processes with the real model."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from embedq import (
    AsyncEmbeddingClient,
    EmbeddingClient,
    EmbeddingConnectionError,
    EmbeddingTimeout,
    EmbedqEmbeddings,
)
from embedq.protocol import unpack_reply
from tests.support.clients import client_for
from tests.support.servers import RedisServer, WorkerProcess, free_port, wait_until
from tests.support.vectors import E5_PREFIXES, RECORD_LONG_TEXT, RECORD_QUERIES, ReferenceModel, cosines

RECORD_TEXTS = [*RECORD_QUERIES, RECORD_LONG_TEXT]


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_vectors_equal_in_process_encode_with_e5_prefixes(
    redis_server: RedisServer, e5_worker: WorkerProcess, in_process: ReferenceModel, kind: str
) -> None:
    with client_for(redis_server, e5_worker) as client:
        got = client.embed(RECORD_TEXTS, kind)
    expected = in_process.encode(RECORD_TEXTS, prefix=E5_PREFIXES[kind])
    assert got.shape == (6, 384)
    assert got.dtype == np.float32
    assert cosines(got, expected).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # and the prefix matters: without it the vectors differ
    assert cosines(got, in_process.encode(RECORD_TEXTS)).min() < 0.999


def test_vectors_equal_in_process_encode_with_default_settings(
    redis_server: RedisServer, default_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    with client_for(redis_server, default_worker) as client:
        queries = np.array([client.embed_query(t) for t in RECORD_QUERIES])
        docs = np.array(client.embed_documents([RECORD_LONG_TEXT]))
    assert cosines(queries, in_process.encode(RECORD_QUERIES)).min() >= 0.99999
    assert cosines(docs, in_process.encode([RECORD_LONG_TEXT])).min() >= 0.99999


def test_queries_and_passages_in_one_batch_each_get_their_prefix(
    redis_server: RedisServer, e5_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    with client_for(redis_server, e5_worker) as client:
        q = client.call(RECORD_QUERIES[:3], "query")
        p = client.call([RECORD_LONG_TEXT, RECORD_QUERIES[3]], "passage")
        client.send(q, p)  # one RPUSH: the worker takes both into one batch
        got_q, got_p = client.wait(q), client.wait(p)
    assert cosines(got_q, in_process.encode(RECORD_QUERIES[:3], "query: ")).min() >= 0.99999
    assert (
        cosines(got_p, in_process.encode([RECORD_LONG_TEXT, RECORD_QUERIES[3]], "passage: ")).min() >= 0.99999
    )


def test_many_documents_are_split_and_come_back_in_order(
    redis_server: RedisServer, e5_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    docs = [f"{RECORD_QUERIES[i % 5]} ({i}번째 문서)" for i in range(21)]
    with client_for(redis_server, e5_worker) as client:
        call = client.call(docs, "passage")
        assert call.requests == [] and call.lane == "bulk"  # documents go behind the questions
        got = client.embed_call(call)  # a window at a time, each request sized by the replies
        assert (
            sum(len(r.texts) for r in call.requests) == 21 and max(len(r.texts) for r in call.requests) <= 8
        )
        assert len(call.requests[0].texts) == 1  # before any reply priced a text
    assert cosines(got, in_process.encode(docs, "passage: ")).min() >= 0.99999


def test_reply_reports_queue_and_encode_time(redis_server: RedisServer, e5_worker: WorkerProcess) -> None:
    r = redis_server.client()
    with client_for(redis_server, e5_worker) as client:
        call = client.call(["연남 카페 추천해줘"])
        started = time.perf_counter()
        client.send(call)
        key = call.pending_keys()[0]
        popped = r.blpop([key], timeout=20)
        elapsed_ms = (time.perf_counter() - started) * 1000
    assert popped is not None
    reply = unpack_reply(popped[1])
    assert reply.ok
    assert 0 < reply.encode_ms < elapsed_ms
    assert 0 <= reply.queue_ms <= elapsed_ms - reply.encode_ms + 5  # Redis-clock ms, whole-ms rounding
    assert reply.batch_size == 1
    assert reply.worker


def test_async_client(
    redis_server: RedisServer, e5_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    async def main() -> tuple[list[float], list[list[float]]]:
        async with AsyncEmbeddingClient.from_url(redis_server.url, queue=e5_worker.queue, timeout=20) as c:
            return await asyncio.gather(
                c.embed_query(RECORD_QUERIES[0]), c.embed_documents(RECORD_QUERIES[1:])
            )

    query, docs = asyncio.run(main())
    assert cosines(np.array([query]), in_process.encode(RECORD_QUERIES[:1], "query: "))[0] >= 0.99999
    assert cosines(np.array(docs), in_process.encode(RECORD_QUERIES[1:], "passage: ")).min() >= 0.99999


def test_embeddings_object_for_rag_chains(
    redis_server: RedisServer, e5_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    from langchain_core.embeddings import Embeddings

    emb = EmbedqEmbeddings(redis_server.url, queue=e5_worker.queue, timeout=20)
    assert isinstance(emb, Embeddings)
    query = emb.embed_query(RECORD_QUERIES[0])
    docs = emb.embed_documents([RECORD_LONG_TEXT])
    assert emb.embed_documents([]) == []

    async def both() -> tuple[list[float], list[list[float]]]:
        try:
            return await emb.aembed_query(RECORD_QUERIES[0]), await emb.aembed_documents([RECORD_LONG_TEXT])
        finally:
            await emb.aclose()

    aquery, adocs = asyncio.run(both())
    assert isinstance(query, list)
    assert isinstance(query[0], float)
    np.testing.assert_allclose(query, aquery, atol=1e-6)
    np.testing.assert_allclose(docs, adocs, atol=1e-6)
    assert cosines(np.array(docs), in_process.encode([RECORD_LONG_TEXT], "passage: "))[0] >= 0.99999


def test_no_worker_means_a_timeout_that_names_the_queue(redis_server: RedisServer) -> None:
    client = EmbeddingClient.from_url(redis_server.url, queue="nobody-home:requests", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(EmbeddingTimeout, match="nobody-home:requests") as info:
        client.embed_query("anyone?")
    assert 0.45 <= time.monotonic() - started < 2.0
    assert "embedq status" in str(info.value) and "nobody-home:requests" in str(info.value)
    client.close()


def test_unreachable_redis_is_a_connection_error_not_a_hang() -> None:
    client = EmbeddingClient.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0)
    started = time.monotonic()
    with pytest.raises(EmbeddingConnectionError, match=r"cannot talk to Redis at redis://127\.0\.0\.1"):
        client.embed_query("hello")
    assert time.monotonic() - started < 2.0


def test_reply_nobody_reads_expires(redis_server: RedisServer, e5_worker: WorkerProcess) -> None:
    r = redis_server.client()
    with client_for(redis_server, e5_worker) as client:
        call = client.call(["아무도 기다리지 않는 질문"])
        client.send(call)  # and never wait: the producer went away
    key = call.pending_keys()[0]
    wait_until(lambda: r.exists(key), 20, "the reply nobody reads")
    assert 0 < r.ttl(key) <= 60
