"""Every bad input: an error to the producer that sent it, vectors for its batch mates, the
worker still serving."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from embedq import Call, EmbeddingClient, EmbeddingError
from embedq.protocol import Keys
from tests.support.clients import client_for
from tests.support.fake_encoder import POISON
from tests.support.requests import now_ms
from tests.support.servers import RedisServer, WorkerProcess
from tests.support.vectors import RECORD_QUERIES, ReferenceModel, cosines


class TamperedCall(Call):
    """A call whose one request goes on the wire changed by ``tamper``: what a buggy producer
    in another language might send."""

    def __init__(self, client: EmbeddingClient, tamper: dict[str, object]) -> None:
        super().__init__(
            ["placeholder"], "query", keys=client.keys, max_batch=client.max_batch, timeout=client.timeout
        )
        body = msgpack.unpackb(super().payloads(now_ms())[0])
        body.update(tamper)
        self.raw = msgpack.packb(body, use_bin_type=True)

    def payloads(self, now_ms: int, limit: int | None = None) -> list[bytes]:
        return [self.raw]  # its one request was built (and counted as sent) above


@pytest.fixture
def client(redis_server: RedisServer, default_worker: WorkerProcess) -> EmbeddingClient:
    return client_for(redis_server, default_worker)


def check_batch(client: EmbeddingClient, bad: Call, in_process: ReferenceModel) -> EmbeddingError:
    """Send a good request, the bad one and another good one in one RPUSH (so one batch)."""
    before, after = client.call(RECORD_QUERIES[:2]), client.call(RECORD_QUERIES[2:], "passage")
    client.send(before, bad, after)
    with pytest.raises(EmbeddingError) as info:
        client.wait(bad)
    assert cosines(client.wait(before), in_process.encode(RECORD_QUERIES[:2])).min() >= 0.99999
    assert cosines(client.wait(after), in_process.encode(RECORD_QUERIES[2:])).min() >= 0.99999
    return info.value


@pytest.mark.parametrize(
    ("texts", "kind", "code", "phrase"),
    [
        (["괜찮아요", ""], "query", "empty_text", "text 1 is empty"),
        (["x" * 8193], "passage", "text_too_long", "8193 characters; the limit is 8192"),
        (["질문"] * 9, "query", "too_many_texts", "at most 8"),
    ],
)
def test_bad_request_through_the_client(
    client: EmbeddingClient,
    in_process: ReferenceModel,
    texts: list[object],
    kind: str,
    code: str,
    phrase: str,
) -> None:
    bad = Call(texts, kind, keys=client.keys, max_batch=16, timeout=client.timeout)  # type: ignore[arg-type]
    error = check_batch(client, bad, in_process)
    assert error.code == code
    assert phrase in error.message
    assert error.request_id == bad.requests[0].id


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ({"texts": []}, "empty_texts"),
        ({"v": 1}, "unsupported_version"),
        ({"texts": ["괜찮아요", 3]}, "invalid_text"),
        ({"kind": "sentence"}, "invalid_kind"),
        ({"texts": "one string"}, "invalid_request"),
    ],
)
def test_malformed_request_with_a_usable_id(
    client: EmbeddingClient, in_process: ReferenceModel, tamper: dict[str, object], code: str
) -> None:
    error = check_batch(client, TamperedCall(client, tamper), in_process)
    assert error.code == code


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xc1\x00 definitely not msgpack", "invalid_msgpack"),
        (msgpack.packb(["a", "list"]), "invalid_request"),
        (msgpack.packb({"v": 1, "kind": "query", "texts": ["no id"], "deadline": 2e9}), "invalid_id"),
        (msgpack.packb({"v": 1, "id": "../../../etc/passwd", "kind": "query", "texts": ["x"]}), "invalid_id"),
    ],
)
def test_request_without_usable_id_is_dead_lettered(
    redis_server: RedisServer,
    default_worker: WorkerProcess,
    client: EmbeddingClient,
    in_process: ReferenceModel,
    raw: bytes,
    code: str,
) -> None:
    r = redis_server.client()
    keys = Keys(default_worker.queue)
    r.delete(keys.dead)
    good = client.call(RECORD_QUERIES[:1])
    r.rpush(keys.queue, raw, *good.payloads(now_ms()))
    assert cosines(client.wait(good), in_process.encode(RECORD_QUERIES[:1]))[0] >= 0.99999
    dead = [msgpack.unpackb(d) for d in r.lrange(keys.dead, 0, -1)]
    assert [d["code"] for d in dead] == [code]
    assert dead[0]["raw"] == raw
    assert not [k for k in r.scan_iter(match="*etc/passwd*")]
    assert default_worker.alive


@pytest.mark.slow
def test_failing_encode_fails_only_the_bad_text(
    redis_server: RedisServer, faulty_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    client = client_for(redis_server, faulty_worker)
    good = client.call(RECORD_QUERIES[:2])
    bad = client.call(["멀쩡한 문장", f"{POISON} 문장"])
    also_good = client.call(RECORD_QUERIES[2:], "passage")
    client.send(good, bad, also_good)
    with pytest.raises(EmbeddingError, match="text 1 could not be encoded: RuntimeError: tokenizer blew up"):
        client.wait(bad)
    assert cosines(client.wait(good), in_process.encode(RECORD_QUERIES[:2])).min() >= 0.99999
    assert cosines(client.wait(also_good), in_process.encode(RECORD_QUERIES[2:])).min() >= 0.99999
    # and the worker keeps serving
    assert np.asarray(client.embed_query("다음 질문")).shape == (384,)
    assert faulty_worker.alive
