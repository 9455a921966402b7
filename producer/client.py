"""The synchronous producer: push texts onto the request list, block on the reply keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis

from .base import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_TIMEOUT, ClientBase, connection_options
from .call import Call, check_pushed, redis_errors

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_TIMEOUT",
    "EmbeddingClient",
    "connection_options",
]


class EmbeddingClient(ClientBase):
    """Embeds texts through the embedq workers; thread-safe (redis-py pools connections).

    ``timeout`` bounds each call end to end: it is also the requests' deadline, after which a
    worker drops them instead of encoding for nobody. ``truncate`` on each method: cut a text
    longer than the model's token window as the model does (True), refuse it (False), or the
    worker's default (None, normally True).
    """

    redis_class = redis.Redis

    def send(self, *calls: Call, limit: int | None = None) -> None:
        """Push the unsent requests of ``calls`` (at most ``limit`` of each) onto the queue, in
        order; ``QueueFull`` if the queue already holds ``max_queue`` requests."""
        with redis_errors(self._where):
            self.clock.sync(self.redis)
            for keys, args in self._pushes(calls, limit):
                pushed = self._enqueue(keys=keys, args=args)
                check_pushed(int(pushed), keys[0], self.max_queue)

    def wait(self, call: Call) -> np.ndarray:
        """Block until every request of ``call`` is answered; the vectors in input order."""
        while not call.done:
            if call.room:
                self.send(call, limit=call.room)
            with redis_errors(self._where):
                popped = self.redis.blpop(call.pending_keys(), timeout=call.remaining())
            if popped is None:
                call.remaining()  # raises EmbeddingTimeout when the time is up
                continue
            call.accept(*popped)
        return call.result()

    def embed(self, texts: Sequence[str], kind: str = "query", *, truncate: bool | None = None) -> np.ndarray:
        """Vectors for ``texts`` as a float32 matrix (one unit-length row per text, input order)."""
        return self.embed_call(self.call(texts, kind, truncate=truncate))

    def embed_call(self, call: Call) -> np.ndarray:
        """Send ``call`` a window at a time and wait for all of it (``call`` keeps the replies:
        token counts, truncated texts, timings)."""
        if not call.texts:
            return np.zeros((0, 0), dtype=np.float32)
        if self.cache is not None:
            call.use_cached(self.cache.lookup(call.kind, call.texts, self.redis, call.pin))
        if call.room:
            self.send(call, limit=call.room)  # the rest stream in as replies come (see Call)
        vectors = self.wait(call)
        self.model_pin.learn(call)
        return vectors

    def embed_query(self, text: str, *, truncate: bool | None = None) -> list[float]:
        """One question's vector, encoded with the model's query prefix."""
        return self.embed([text], "query", truncate=truncate)[0].tolist()

    def embed_queries(self, texts: Sequence[str], *, truncate: bool | None = None) -> list[list[float]]:
        """Several questions' vectors, in input order."""
        return self.embed(texts, "query", truncate=truncate).tolist()

    def embed_documents(self, texts: Sequence[str], *, truncate: bool | None = None) -> list[list[float]]:
        """Documents' vectors (passage prefix), in input order; split into max-batch requests."""
        return self.embed(texts, "passage", truncate=truncate).tolist()

    def close(self) -> None:
        """Release the connection pools."""
        if self.cache is not None:
            self.cache.redis.close()
        self.redis.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
