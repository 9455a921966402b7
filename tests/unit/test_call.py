"""One call's bookkeeping (producer/call.py): planned at once, each request built once, when sent."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest

from embedq import Call, EmbeddingError
from embedq.protocol import Keys, Limits, Reply, parse_request

KEYS = Keys()


def test_requests_are_built_when_sent_with_the_deadline_they_travel_with() -> None:
    call = Call([f"t{i}" for i in range(20)], "passage", keys=KEYS, max_batch=8, timeout=5.0)
    assert [len(c) for c in call.chunks] == [8, 8, 4] and call.requests == [] and call.unsent == 3
    first = call.payloads(now_ms=1_000_000, limit=1)
    assert call.sent == 1 and len(call.requests) == 1
    sent = parse_request(first[0], Limits(max_texts=8))
    assert sent == call.requests[0]  # what travels is the request the call keeps
    assert sent.sent_ms == 1_000_000 and 1_000_000 + 4_900 <= sent.deadline_ms <= 1_005_000
    rest = call.payloads(now_ms=2_000_000)
    deadlines = [parse_request(p, Limits()).deadline_ms for p in rest]
    assert deadlines == [2_005_000, 2_005_000]  # each send is progress: a whole timeout again
    assert len({r.id for r in call.requests}) == 3 and call.unsent == 0


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
