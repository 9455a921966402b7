"""One call's bookkeeping (producer/call.py): planned at once, each request built once, when sent."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest

from embedq import Call, EmbeddingError
from embedq.protocol import Keys, Limits, Reply, Request, parse_request

KEYS = Keys()


def test_requests_are_built_when_sent_with_the_deadline_they_travel_with() -> None:
    call = Call([f"q{i}" for i in range(8)], "query", keys=KEYS, max_batch=8, timeout=5.0)
    assert call.lane == "online" and call.queue == KEYS.queue and call.requests == [] and call.room == 1
    (raw,) = call.payloads(now_ms=1_000_000)
    sent = parse_request(raw, Limits(max_texts=8))
    assert sent == call.requests[0]  # what travels is the request the call keeps
    assert sent.sent_ms == 1_000_000 and 1_000_000 + 4_900 <= sent.deadline_ms <= 1_005_000
    assert call.chunks == [list(range(8))] and call.unsent == 0 and call.room == 0


def test_a_background_call_goes_longest_first_and_sizes_its_requests_by_the_replies() -> None:
    texts = [f"{'x' * (i % 5)}t{i}" for i in range(20)]
    call = Call(texts, "passage", keys=KEYS, max_batch=8, timeout=5.0)
    assert call.lane == "bulk" and call.queue == KEYS.bulk
    assert call.room == 2  # before any reply: a small window of one-text requests
    first = call.payloads(now_ms=2_000_000, limit=call.room)
    assert [len(parse_request(p, Limits()).texts) for p in first] == [1, 1]
    longest = sorted(map(len, texts), reverse=True)[:2]
    assert [len(texts[i]) for c in call.chunks for i in c] == longest  # the longest texts first
    for request in call.requests:  # 10 ms a text, no queue wait: bigger requests, a wider window
        reply = Reply(id=request.id, vectors=np.ones((1, 4), np.float32), digest=request.digest,
                      encode_ms=10.0, batch_size=1)  # fmt: skip
        call.accept(KEYS.reply(request.id), reply.pack())
    assert call.flow.texts_per_request() == 8 and call.room == 2  # the window grows a request per window
    rest = call.payloads(now_ms=2_100_000)  # everything left, as ``client.send(call)`` does
    assert [len(parse_request(p, Limits()).texts) for p in rest] == [8, 8, 2]
    deadlines = [parse_request(p, Limits()).deadline_ms for p in rest]
    # each waited for one timeout more than the request in flight before it (each send is progress)
    assert deadlines == [2_105_000, 2_110_000, 2_115_000]
    assert call.unsent == 0 and sorted(i for c in call.chunks for i in c) == list(range(20))


def test_replies_that_waited_long_shrink_the_window() -> None:
    call = Call([f"t{i}" for i in range(40)], "passage", keys=KEYS, max_batch=8, timeout=4.0)
    call.payloads(now_ms=0, limit=2)
    for request in call.requests:
        reply = Reply(id=request.id, vectors=np.ones((1, 4), np.float32), digest=request.digest,
                      queue_ms=1500.0, encode_ms=10.0, batch_size=1)  # fmt: skip
        call.accept(KEYS.reply(request.id), reply.pack())
    assert call.flow.window == 1  # 1.5 s in the queue is over a quarter of 4 s


def test_the_first_send_gets_what_is_left_of_the_timeout() -> None:
    call = Call(["q"], "query", keys=KEYS, max_batch=8, timeout=1.0)
    call.started = call.progress_at = time.monotonic() - 0.4  # planned 0.4 s ago
    (raw,) = call.payloads(now_ms=0)
    assert 550 <= msgpack.unpackb(raw)["deadline_ms"] <= 600


def test_replies_are_matched_to_the_request_they_answer() -> None:
    call = Call(["a", "b"], "query", keys=KEYS, max_batch=1, timeout=5.0)
    call.payloads(now_ms=0)
    first, second = call.requests
    vector = np.ones((1, 4), np.float32)
    call.accept(KEYS.reply(second.id), Reply(id=second.id, vectors=vector, digest=second.digest).pack())
    assert not call.done and call.in_flight == 1 and call.pending_keys() == [KEYS.reply(first.id)]
    with pytest.raises(EmbeddingError, match="other texts"):
        call.accept(KEYS.reply(first.id), Reply(id=first.id, vectors=vector, digest="0" * 16).pack())


def reply_for(request: Request, fingerprint: str, model: str = "e5") -> bytes:
    vectors = np.ones((len(request.texts), 4), np.float32)
    return Reply(
        id=request.id, vectors=vectors, digest=request.digest, model=model, fingerprint=fingerprint
    ).pack()


def test_the_first_reply_pins_the_call_and_a_second_model_is_an_error_never_a_mixed_matrix() -> None:
    call = Call([f"t{i}" for i in range(3)], "passage", keys=KEYS, max_batch=8, timeout=5.0)
    call.payloads(now_ms=0)  # three one-text requests
    first, second, third = call.requests
    call.accept(KEYS.reply(first.id), reply_for(first, "f1"))
    assert (call.fingerprint, call.served_by, call.pinned) == ("f1", "e5", False)
    call.accept(KEYS.reply(second.id), reply_for(second, "f1"))
    with pytest.raises(EmbeddingError, match=r"answered with model .e5-v2..*two models serve") as info:
        call.accept(KEYS.reply(third.id), reply_for(third, "f2", "e5-v2"))
    assert info.value.code == "model_mismatch" and not call.done


def test_a_pinned_call_says_so_on_the_wire_and_refuses_an_unnamed_answer() -> None:
    call = Call(["q"], "query", keys=KEYS, max_batch=8, timeout=5.0, model="e5", fingerprint="f1")
    (raw,) = call.payloads(now_ms=0)
    sent = parse_request(raw, Limits())
    assert (sent.model, sent.fingerprint) == ("e5", "f1")
    old_worker = Reply(id=sent.id, vectors=np.ones((1, 4), np.float32), digest=sent.digest).pack()
    with pytest.raises(EmbeddingError, match="does not say which model answered") as info:
        call.accept(KEYS.reply(sent.id), old_worker)
    assert info.value.code == "model_unknown"


def test_an_unpinned_call_takes_an_old_workers_answer() -> None:
    call = Call(["q"], "query", keys=KEYS, max_batch=8, timeout=5.0)
    (raw,) = call.payloads(now_ms=0)
    sent = parse_request(raw, Limits())
    assert (sent.model, sent.fingerprint) == (None, None)
    call.accept(
        KEYS.reply(sent.id), Reply(id=sent.id, vectors=np.ones((1, 4), np.float32), digest=sent.digest).pack()
    )
    assert call.done and call.fingerprint is None
