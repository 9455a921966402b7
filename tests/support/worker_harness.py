"""A worker loop on fakeredis with the fake encoder, for the unit tests of the worker's modules."""

from __future__ import annotations

import fakeredis

from embedq.protocol import Keys, Reply, Request, unpack_reply
from embedq.worker.loop import Worker
from embedq.worker.settings import Settings

from .fake_encoder import FakeEncoder
from .requests import make_request

KEYS = Keys()
"""The default deployment's keys (queue ``embed:requests``)."""


def make_worker(r: fakeredis.FakeRedis, **changes: object) -> tuple[Worker, FakeEncoder]:
    """Worker ``w1`` with no batch wait and an 8-dimension fake encoder; ``changes`` to settings."""
    encoder = FakeEncoder()
    settings = Settings(worker_id="w1", batch_wait_ms=0, max_text_chars=50, **changes)  # type: ignore[arg-type]
    return Worker(settings, encoder, r), encoder


def request(*texts: str, kind: str = "query", timeout: float = 30.0) -> Request:
    """A request sent now whose deadline is ``timeout`` s away (negative: already past)."""
    return make_request(*texts, kind=kind, timeout=timeout)


def push(r: fakeredis.FakeRedis, *items: Request | bytes) -> None:
    """Enqueue requests (or raw bytes) as a producer would: with a wake token for idle workers."""
    r.rpush(KEYS.queue, *(i.pack() if isinstance(i, Request) else i for i in items))
    r.rpush(KEYS.wake, 1)


def reply_of(r: fakeredis.FakeRedis, req: Request) -> Reply:
    """The reply written for ``req`` (fails the test if there is none)."""
    raw = r.lpop(KEYS.reply(req.id))
    assert raw is not None, "no reply written"
    return unpack_reply(raw)


def drain(worker: Worker) -> None:
    """Serve until the queue is empty."""
    while worker.serve_once(block=0.01):
        pass
