"""The one place that builds Redis clients, and the one reconnect backoff (every URL form of
``embedq.topology``: plain, TLS, Sentinel).

Every client embedq makes (producers, workers, the heartbeat thread, the cache, ``status``, the
bulk job and its RQ worker) comes from ``connect`` with the timeouts of its role, so a dropped
connection or a dead peer can never hang any of them; every wait for Redis to come back grows
by ``Backoff``.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from .topology import client_from_url

SOCKET_GRACE = 1.0
"""Socket timeout beyond a producer call's timeout: a blocking pop ends by itself first (Redis
answers within ~0.1 s of its timeout); a silently dropped connection ends by the socket soon after."""
MAX_CONNECTIONS = 1000
"""Connections one producer client may open (one per call in flight)."""
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
"""The errors that mean "Redis is not answering" (as opposed to refusing a command)."""


CACHE_CONNECT_TIMEOUT_S = 0.25
"""Connect timeout of a producer's query-cache client: a blackholed cache costs this, not 5 s."""
CACHE_SOCKET_TIMEOUT_S = 0.25
"""Longest a cache lookup may take before the call goes through the queue instead."""


def cache_options() -> dict[str, Any]:
    """redis-py options of a producer's query-cache client: short timeouts and no retry, since a
    cache that does not answer at once is worth less than the queue (``embedq.breaker`` then
    leaves it alone for a while)."""
    return {
        "socket_timeout": CACHE_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CACHE_CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": MAX_CONNECTIONS,
    }


def connect(
    url: str,
    *,
    socket_timeout: float | None,
    connect_timeout: float = 5.0,
    asyncio: bool = False,
    **options: Any,
) -> Any:
    """A client on its own pool. ``socket_timeout``: the longest any reply may take (longer than
    the longest blocking command the caller sends; None only for RQ, whose blocking waits are its
    own). One immediate retry on a connection error renews a pooled connection that Redis closed
    (a restart); timeouts are never retried. ``options`` override any redis-py option."""
    base: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
    }
    return client_from_url(url, asyncio=asyncio, **{**base, **options})


def producer_options(timeout: float) -> dict[str, Any]:
    """redis-py options of a producer client whose calls wait up to ``timeout`` without progress.

    Its one retry (on connection errors only) waits a moment first, so a call that meets a
    restarting Redis reconnects instead of failing at once; a call never waits much past its
    timeout, and a busy chatbot process can hold many calls at once (redis-py's default pool of
    100 would fail the 101st with "Too many connections").
    """
    return {
        "socket_timeout": timeout + SOCKET_GRACE,
        "socket_connect_timeout": min(timeout, 5.0),
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(ConnectionError,)),
        "max_connections": MAX_CONNECTIONS,
    }


class Backoff:
    """Waits that double from ``start`` up to ``cap`` while Redis keeps failing; ``reset`` after a
    success. Used by the worker's loop and heartbeat thread and by the bulk job."""

    def __init__(self, start: float = 0.05, cap: float = 2.0) -> None:
        self.start = start
        self.cap = cap
        self._next = start

    def next(self) -> float:
        """The seconds to wait now; the following wait is twice as long (at most ``cap``)."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Start again from ``start`` (Redis answered)."""
        self._next = self.start
