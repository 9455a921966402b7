"""The synchronous producer: push texts onto the request list, block on the reply keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from .call import ENQUEUE_SCRIPT, Call, check_pushed, describe, push_slices, redis_errors
from .protocol import DEFAULT_QUEUE, Keys

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_QUEUE = 10_000
SOCKET_GRACE = 1.0
"""Socket timeout beyond the call timeout: a blocking pop ends by itself first (Redis answers
within ~0.1 s of its timeout); a silently dropped connection ends by the socket soon after."""


def connection_options(timeout: float) -> dict[str, Any]:
    """redis-py options under which a dead peer or a dropped connection cannot hang a call.

    One retry, on connection errors only, renews a pooled connection that Redis closed (a
    restart); timeouts are never retried, so a call never waits much past its timeout.
    """
    return {
        "socket_timeout": timeout + SOCKET_GRACE,
        "socket_connect_timeout": min(timeout, 5.0),
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(ConnectionError,)),
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
        max_queue: int | None = DEFAULT_MAX_QUEUE,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.redis = client
        self.max_queue = max_queue
        self._enqueue = client.register_script(ENQUEUE_SCRIPT)
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
        max_queue: int | None = DEFAULT_MAX_QUEUE,
        **redis_options: Any,
    ) -> EmbeddingClient:
        """A client on its own connection pool; ``redis_options`` override the socket settings."""
        options = {**connection_options(timeout), **redis_options}
        return cls(
            redis.Redis.from_url(url, **options),
            queue=queue,
            timeout=timeout,
            max_batch=max_batch,
            max_queue=max_queue,
        )

    def call(self, texts: Sequence[str], kind: str = "query") -> Call:
        """A call for ``texts`` (split into max-batch requests), not yet sent."""
        return Call(texts, kind, keys=self.keys, max_batch=self.max_batch, timeout=self.timeout)

    def send(self, *calls: Call) -> None:
        """Push the requests of ``calls`` onto the queue, in order; ``QueueFull`` if the queue
        already holds ``max_queue`` requests."""
        payloads = [p for c in calls for p in c.payloads()]
        with redis_errors(self._where):
            for args in push_slices(payloads, self.max_queue):
                pushed = self._enqueue(keys=[self.keys.queue], args=args)
                check_pushed(int(pushed), self.keys.queue, self.max_queue)

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
