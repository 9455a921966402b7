"""The synchronous producer: push texts onto the request list, block on the reply keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from .call import Call, describe, redis_errors
from .protocol import DEFAULT_QUEUE, Keys

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BATCH = 8
SOCKET_GRACE = 5.0
"""Socket timeout beyond the call timeout, so a blocking pop ends by itself, not by the socket."""


def connection_options(timeout: float) -> dict[str, Any]:
    """redis-py options under which a dead peer or a dropped connection cannot hang a call."""
    return {
        "socket_timeout": timeout + SOCKET_GRACE,
        "socket_connect_timeout": min(timeout, 5.0),
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


class EmbeddingClient:
    """Embeds texts through the embedq workers; thread-safe (redis-py pools connections).

    ``timeout`` bounds each call end to end: it is also the requests' deadline, after which a
    worker drops them instead of encoding for nobody.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        queue: str = DEFAULT_QUEUE,
        timeout: float = DEFAULT_TIMEOUT,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.redis = client
        self.keys = Keys(queue)
        self.timeout = timeout
        self.max_batch = max_batch
        self._where = describe(client.connection_pool.connection_kwargs)

    @classmethod
    def from_url(
        cls,
        url: str = "redis://localhost:6379/0",
        *,
        queue: str = DEFAULT_QUEUE,
        timeout: float = DEFAULT_TIMEOUT,
        max_batch: int = DEFAULT_MAX_BATCH,
        **redis_options: Any,
    ) -> EmbeddingClient:
        """A client on its own connection pool; ``redis_options`` override the socket settings."""
        options = {**connection_options(timeout), **redis_options}
        return cls(redis.Redis.from_url(url, **options), queue=queue, timeout=timeout, max_batch=max_batch)

    def call(self, texts: Sequence[str], kind: str = "query") -> Call:
        """A call for ``texts`` (split into max-batch requests), not yet sent."""
        return Call(texts, kind, keys=self.keys, max_batch=self.max_batch, timeout=self.timeout)

    def send(self, *calls: Call) -> None:
        """Push the requests of ``calls`` onto the queue in one RPUSH, in order."""
        with redis_errors(self._where):
            self.redis.rpush(self.keys.queue, *(p for c in calls for p in c.payloads()))

    def wait(self, call: Call) -> np.ndarray:
        """Block until every request of ``call`` is answered; the vectors in input order."""
        with redis_errors(self._where):
            while not call.done:
                popped = self.redis.blpop(call.pending_keys(), timeout=call.remaining())
                if popped is None:
                    call.remaining()  # raises EmbeddingTimeout when the time is up
                    continue
                call.accept(*popped)
        return call.result()

    def embed(self, texts: Sequence[str], kind: str = "query") -> np.ndarray:
        """Vectors for ``texts`` as a float32 matrix (one unit-length row per text, input order)."""
        if len(texts) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        call = self.call(texts, kind)
        self.send(call)
        return self.wait(call)

    def embed_query(self, text: str) -> list[float]:
        """One question's vector, encoded with the model's query prefix."""
        return self.embed([text], "query")[0].tolist()

    def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        """Several questions' vectors, in input order."""
        return self.embed(texts, "query").tolist()

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Documents' vectors (passage prefix), in input order; split into max-batch requests."""
        return self.embed(texts, "passage").tolist()

    def close(self) -> None:
        """Release the connection pool."""
        self.redis.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
