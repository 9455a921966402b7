"""What the sync and asyncio producers share: options, connection settings, call planning."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from . import defaults
from .cache import DEFAULT_KINDS, CacheLookup, check_kinds
from .call import ENQUEUE_SCRIPT, Call, check_timeout, push_slices
from .clock import RedisClock
from .connection import cache_options, producer_options
from .protocol import DEFAULT_QUEUE, Keys
from .topology import CLUSTER_NEEDS_TAG, client_from_url, where

DEFAULT_TIMEOUT = defaults.TIMEOUT_S
DEFAULT_MAX_BATCH = defaults.MAX_BATCH
DEFAULT_MAX_QUEUE = defaults.MAX_QUEUE

CLIENT_OPTIONS = (
    "queue", "timeout", "max_batch", "max_queue", "cache_url", "cache_kinds", "model", "fingerprint", "pin",
    "model_pin",
)  # fmt: skip
"""The options of every producer client, besides the Redis connection's."""


connection_options = producer_options
"""redis-py options under which a dead peer or a dropped connection cannot hang a call (the
name this module exported before ``connection`` held them)."""


def _redis_option_names() -> frozenset[str]:
    names = set(inspect.signature(redis.Redis.__init__).parameters)
    names |= set(inspect.signature(redis.Connection.__init__).parameters)
    names |= set(inspect.signature(redis.SSLConnection.__init__).parameters)
    names |= set(inspect.signature(redis.ConnectionPool.__init__).parameters)
    return frozenset(names - {"self", "kwargs", "args", "connection_pool", "host", "port", "db"})


REDIS_OPTIONS = _redis_option_names()
"""Keyword options redis-py's client and connections take: anything else is a typo."""


def check_redis_options(owner: str, options: dict[str, Any], takes: Sequence[str] = CLIENT_OPTIONS) -> None:
    """``TypeError`` naming the accepted options (``takes``, then redis-py's) if ``options``
    holds one redis-py does not take."""
    unknown = sorted(set(options) - REDIS_OPTIONS)
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(takes)} and redis-py connection options "
            "(socket_timeout, password, ssl_ca_certs, ...)"
        )


@dataclass
class ModelPin:
    """Which model a client's vectors must come from: ``model`` (a served name, or the model's
    id), ``fingerprint`` (exactly that model, export, prefixes and window), and ``sticky``: the
    first call's answer pins the client for its life (what a chatbot whose vector store was built
    with one model wants). One pin may be shared by several clients (``EmbedqEmbeddings``' sync
    and asyncio ones)."""

    model: str | None = None
    fingerprint: str | None = None
    sticky: bool = False

    def learn(self, call: Call) -> None:
        """After a call: a sticky pin takes the fingerprint that answered it."""
        if self.sticky and self.fingerprint is None and call.fingerprint:
            self.fingerprint = call.fingerprint


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
        cache: Any = None,
        cache_kinds: Sequence[str] = DEFAULT_KINDS,
        model: str | None = None,
        fingerprint: str | None = None,
        pin: bool = False,
        model_pin: ModelPin | None = None,
    ) -> None:
        if isinstance(client, str):
            raise TypeError(
                f"{type(self).__name__} takes a redis-py client; for a URL use "
                f"{type(self).__name__}.from_url({client!r})"
            )
        if isinstance(client, (redis.RedisCluster, redis.asyncio.RedisCluster)) and not Keys(queue).slotted:
            raise TypeError(CLUSTER_NEEDS_TAG.format(queue=queue))
        if not hasattr(client, "register_script"):
            raise TypeError(f"{type(self).__name__} takes a redis-py client, got {type(client).__name__}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int)):
            raise TypeError(f"max_queue must be an integer or None, got {max_queue!r}")
        self.redis = client
        self.keys = Keys(queue)
        self.timeout = check_timeout(timeout)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.clock = RedisClock()
        self._enqueue = client.register_script(ENQUEUE_SCRIPT)
        self._where = where(client)
        kinds = check_kinds(cache_kinds)  # a typo is an error now, with or without a cache
        self.cache = None if cache is None else CacheLookup(cache, self.keys, kinds=kinds)
        """The query cache's reader (``cache_url``), or None: every text goes through the queue."""
        self.model_pin = model_pin or ModelPin(model, fingerprint, pin)
        """The model every call of this client must be answered by (see ``ModelPin``)."""

    @classmethod
    def from_url(
        cls,
        url: str = defaults.REDIS_URL,
        *,
        queue: str = DEFAULT_QUEUE,
        timeout: float = DEFAULT_TIMEOUT,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int | None = DEFAULT_MAX_QUEUE,
        cache_url: str | None = None,
        cache_kinds: Sequence[str] = DEFAULT_KINDS,
        model: str | None = None,
        fingerprint: str | None = None,
        pin: bool = False,
        model_pin: ModelPin | None = None,
        **redis_options: Any,
    ) -> Any:
        """A client on its own connection pool; ``redis_options`` override the socket settings.
        ``cache_url``: the query cache's Redis (the workers' ``EMBED_CACHE_URL``), or None.
        ``model`` / ``fingerprint``: the model every answer must come from (else an error naming
        what serves); ``pin=True``: the first answer's model, for the client's life."""
        check_redis_options(f"{cls.__name__}.from_url", redis_options)
        options = {**connection_options(check_timeout(timeout)), **redis_options}
        cache = None
        if cache_url:
            cache = client_from_url(
                cache_url, asyncio=cls.redis_class is redis.asyncio.Redis, **cache_options()
            )
        return cls(
            client_from_url(url, asyncio=cls.redis_class is redis.asyncio.Redis, **options),
            queue=queue,
            timeout=timeout,
            max_batch=max_batch,
            max_queue=max_queue,
            cache=cache,
            cache_kinds=cache_kinds,
            model=model,
            fingerprint=fingerprint,
            pin=pin,
            model_pin=model_pin,
        )

    def call(
        self,
        texts: Sequence[str],
        kind: str = "query",
        *,
        truncate: bool | None = None,
        model: str | None = None,
    ) -> Call:
        """A call for ``texts`` (split into max-batch requests), not yet sent. ``truncate``: cut
        texts longer than the model's token window (True), refuse them (False), or the worker's
        default (None). ``model``: this call's expected model (default: the client's pin)."""
        pin = self.model_pin
        return Call(
            texts,
            kind,
            keys=self.keys,
            max_batch=self.max_batch,
            timeout=self.timeout,
            truncate=truncate,
            model=model or pin.model,
            fingerprint=pin.fingerprint,
        )

    def _pushes(self, calls: Sequence[Call], limit: int | None) -> list[tuple[list[str], list[bytes | int]]]:
        """(keys, args) of each enqueue script call that sends ``calls``' next requests: one
        round trip per lane (and per PUSH_SLICE requests), in order within each lane."""
        now = self.clock.now_ms()
        by_list: dict[str, list[bytes]] = {}
        for call in calls:
            by_list.setdefault(call.queue, []).extend(call.payloads(now, limit))
        return [
            ([queue, self.keys.wake], args)
            for queue, payloads in by_list.items()
            if payloads
            for args in push_slices(payloads, self.max_queue)
        ]
