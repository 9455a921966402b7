"""The producer clients against fakeredis, with a hand-written worker reply: no model needed."""

from __future__ import annotations

import asyncio
import threading
import time

import fakeredis
import numpy as np
import pytest

from embedq import (
    AsyncEmbeddingClient,
    EmbeddingClient,
    EmbeddingError,
    EmbeddingTimeout,
    EmbedqEmbeddings,
    InvalidInput,
    QueueFull,
)
from embedq.protocol import Limits, Reply, parse_request


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def sync_client(server: fakeredis.FakeServer, **options: object) -> EmbeddingClient:
    return EmbeddingClient(fakeredis.FakeRedis(server=server), **options)  # type: ignore[arg-type]


def answer_all(
    server: fakeredis.FakeServer, texts: int, *, error: bool = False, lanes: list[str] | None = None
) -> threading.Thread:
    """A stand-in worker: answers requests from both lists until ``texts`` texts are answered,
    each text's vector = [len(text), 0, 0]; ``lanes`` records which list each request came from."""

    def run() -> None:
        r = fakeredis.FakeRedis(server=server)
        answered = 0
        while answered < texts:
            key, raw = r.blpop(["embed:requests", "embed:bulk"], timeout=5)
            if lanes is not None:
                lanes.append(key.decode())
            req = parse_request(raw, Limits(max_texts=100))
            answered += len(req.texts)
            if error:
                reply = Reply(id=req.id, code="text_too_long", message="text 0 is too long")
            else:
                vectors = np.array([[len(t), 0, 0] for t in req.texts], np.float32)
                reply = Reply(
                    id=req.id, vectors=vectors, encode_ms=2.0 * len(req.texts), batch_size=len(req.texts)
                )
            r.rpush(f"embed:reply:{req.id}", reply.pack())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_many_texts_are_split_and_reassembled_in_order(server: fakeredis.FakeServer) -> None:
    client = sync_client(server, max_batch=3)
    texts = ["a" * n for n in range(1, 11)]
    lanes: list[str] = []
    worker = answer_all(server, 10, lanes=lanes)
    got = client.embed_documents(texts)
    worker.join(5)
    assert [row[0] for row in got] == list(range(1, 11))
    assert set(lanes) == {"embed:bulk"}  # documents go behind the questions


def test_a_question_goes_to_the_online_lane_and_a_long_query_call_to_the_background(
    server: fakeredis.FakeServer,
) -> None:
    client = sync_client(server, max_batch=3)
    lanes: list[str] = []
    worker = answer_all(server, 1 + 3 + 4, lanes=lanes)
    client.embed_query("one question")
    client.embed_queries(["three", "short", "ones"])
    client.embed_queries(["four", "questions", "in", "one"])  # more than one request: background
    worker.join(5)
    assert lanes[:2] == ["embed:requests", "embed:requests"] and set(lanes[2:]) == {"embed:bulk"}


def test_error_reply_raises_embedding_error(server: fakeredis.FakeServer) -> None:
    client = sync_client(server)
    answer_all(server, 1, error=True)
    with pytest.raises(EmbeddingError, match="text_too_long: text 0 is too long") as info:
        client.embed_query("x")
    assert info.value.code == "text_too_long"


def test_timeout_says_how_long_and_which_queue(server: fakeredis.FakeServer) -> None:
    client = sync_client(server, timeout=0.3, queue="tenant:requests")
    started = time.monotonic()
    with pytest.raises(EmbeddingTimeout, match=r"after 0\.[3-9]\ds .*'tenant:requests'") as info:
        client.embed_query("x")
    assert time.monotonic() - started < 1.5
    assert info.value.pending == 1


def test_queue_full_is_refused_at_once_with_the_depth(server: fakeredis.FakeServer) -> None:
    client = sync_client(server, max_queue=5)
    for _ in range(5):
        client.send(client.call(["x"]))
    started = time.monotonic()
    with pytest.raises(QueueFull, match="holds 5 requests, at its cap of 5") as info:
        client.embed_query("one too many")
    assert time.monotonic() - started < 0.5
    assert info.value.depth == 5
    assert fakeredis.FakeRedis(server=server).llen("embed:requests") == 5


def test_no_cap_when_max_queue_is_none(server: fakeredis.FakeServer) -> None:
    client = sync_client(server, max_queue=None)
    for _ in range(20):
        client.send(client.call(["x"]))
    assert fakeredis.FakeRedis(server=server).llen("embed:requests") == 20


def test_single_string_is_refused_locally(server: fakeredis.FakeServer) -> None:
    with pytest.raises(InvalidInput, match="not a single string"):
        sync_client(server).embed_documents("a string")  # type: ignore[arg-type]


def test_empty_list_needs_no_round_trip(server: fakeredis.FakeServer) -> None:
    assert sync_client(server, timeout=0.01).embed_documents([]) == []


def test_async_client_queue_full_and_round_trip(server: fakeredis.FakeServer) -> None:
    async def main() -> list[list[float]]:
        client = AsyncEmbeddingClient(fakeredis.FakeAsyncRedis(server=server), max_queue=1)
        answer_all(server, 2)
        docs = await client.embed_documents(["abc", "de"])
        await client.send(client.call(["waiting"]))
        with pytest.raises(QueueFull):
            await client.embed_query("refused")
        return docs

    assert [row[0] for row in asyncio.run(main())] == [3, 2]


# --- every bad argument is refused before anything is sent, with a message a person can act on ---


@pytest.mark.parametrize(
    ("texts", "kind", "phrase"),
    [
        (["fine", "lone \ud800 surrogate"], "query", "text 1 cannot be encoded as UTF-8"),
        (["fine", 42], "query", "text 1 is int, not a string"),
        (["fine"], "sentence", "'query' or 'passage'"),
        ("one string", "query", "not a single string"),
    ],
)
def test_bad_texts_are_refused_locally(
    server: fakeredis.FakeServer, texts: object, kind: str, phrase: str
) -> None:
    client = sync_client(server)
    with pytest.raises(InvalidInput, match=phrase):
        client.embed(texts, kind)  # type: ignore[arg-type]
    assert fakeredis.FakeRedis(server=server).llen("embed:requests") == 0


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, 0.0])
def test_timeouts_must_be_positive_and_finite(server: fakeredis.FakeServer, timeout: float) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        sync_client(server, timeout=timeout)
    with pytest.raises(ValueError, match="positive finite"):
        EmbeddingClient.from_url("redis://localhost:1/0", timeout=timeout)


def test_misspelled_options_are_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"'timout'.*takes queue, timeout, max_batch, max_queue"):
        EmbeddingClient.from_url("redis://localhost:1/0", timout=3)
    with pytest.raises(TypeError, match=r"'redis_ur'.*takes url, redis_url, queue.*truncate"):
        EmbedqEmbeddings(redis_ur="redis://localhost:1/0")
    with pytest.raises(ValueError, match=r"cache kinds.*'questions'"):  # even without a cache_url
        EmbedqEmbeddings("redis://localhost:1/0", cache_kinds=["questions"])
    with pytest.raises(TypeError, match=r"use EmbeddingClient.from_url\('redis://localhost:1/0'\)"):
        EmbeddingClient("redis://localhost:1/0")  # type: ignore[arg-type]
    ok = EmbedqEmbeddings(redis_url="redis://localhost:1/0", socket_timeout=2.0)
    assert ok.url == "redis://localhost:1/0"


def test_truncate_travels_in_the_request(server: fakeredis.FakeServer) -> None:
    client = sync_client(server)
    call = client.call(["a"], "passage", truncate=False)
    body = parse_request(call.payloads(1_000)[0], Limits())
    assert body.truncate is False and 5_900 < body.deadline_ms <= 1_000 + 5_000
    with pytest.raises(InvalidInput, match="truncate"):
        client.call(["a"], truncate="no")  # type: ignore[arg-type]
