"""What the sync and asyncio producers share: options, connection settings, call planning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from .call import ENQUEUE_SCRIPT, Call, describe
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


class ClientBase:
    """Options and call planning of a producer client; subclasses do the I/O.

    ``timeout`` bounds each call end to end: it is also the requests' deadline, after which a
    worker drops them instead of encoding for nobody. ``max_queue`` is the queue depth at which
    sending is refused with ``QueueFull`` (None: no cap).
    """

    redis_class: ClassVar[Any]
    """The redis-py client class ``from_url`` builds (sync or asyncio)."""

    def __init__(
        self,
        client: Any,
        *,
        queue: str = DEFAULT_QUEUE,
        timeout: float = DEFAULT_TIMEOUT,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int | None = DEFAULT_MAX_QUEUE,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.redis = client
        self.keys = Keys(queue)
        self.timeout = timeout
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._enqueue = client.register_script(ENQUEUE_SCRIPT)
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
    ) -> Any:
        """A client on its own connection pool; ``redis_options`` override the socket settings."""
        options = {**connection_options(timeout), **redis_options}
        return cls(
            cls.redis_class.from_url(url, **options),
            queue=queue,
            timeout=timeout,
            max_batch=max_batch,
            max_queue=max_queue,
        )

    def call(self, texts: Sequence[str], kind: str = "query") -> Call:
        """A call for ``texts`` (split into max-batch requests), not yet sent."""
        return Call(texts, kind, keys=self.keys, max_batch=self.max_batch, timeout=self.timeout)
