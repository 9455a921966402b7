"""The drop-in embeddings object for a RAG chain, replacing an in-process model.

It subclasses langchain_core's ``Embeddings`` when langchain-core is installed (extra
``[langchain]``) so vector stores accept it, and works the same without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import defaults
from .aio import AsyncEmbeddingClient
from .base import (
    CLIENT_OPTIONS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    DEFAULT_TIMEOUT,
    ModelPin,
    check_redis_options,
)
from .cache import DEFAULT_KINDS
from .client import EmbeddingClient
from .protocol import DEFAULT_QUEUE

try:
    from langchain_core.embeddings import Embeddings as _Base
except ImportError:  # langchain-core is optional

    class _Base:  # type: ignore[no-redef]
        """Stand-in base class when langchain-core is not installed."""


class EmbedqEmbeddings(_Base):
    """``embed_query`` / ``embed_documents`` (and their async twins) through embedq workers.

    The worker adds the model's query/passage prefixes; callers pass plain texts. ``cache_url``:
    the query cache's Redis (the workers' ``EMBED_CACHE_URL``): repeated questions are answered
    from it in one round trip.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        redis_url: str | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout: float = DEFAULT_TIMEOUT,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int | None = DEFAULT_MAX_QUEUE,
        truncate: bool | None = None,
        cache_url: str | None = None,
        cache_kinds: Sequence[str] = DEFAULT_KINDS,
        model: str | None = None,
        fingerprint: str | None = None,
        pin: bool = False,
        **redis_options: Any,
    ) -> None:
        if url is not None and redis_url is not None and url != redis_url:
            raise TypeError("EmbedqEmbeddings got both url and redis_url: pass one")
        url = url or redis_url or defaults.REDIS_URL
        check_redis_options(
            "EmbedqEmbeddings",
            redis_options,
            takes=("url", "redis_url", *(o for o in CLIENT_OPTIONS if o != "model_pin"), "truncate"),
        )
        if truncate is not None and not isinstance(truncate, bool):
            raise TypeError(f"truncate must be True, False or None, got {truncate!r}")
        self.truncate = truncate
        """Texts over the model's token window: cut (True), refused (False), worker default (None)."""
        self._options: dict[str, Any] = {
            "queue": queue,
            "timeout": timeout,
            "max_batch": max_batch,
            "max_queue": max_queue,
            "cache_url": cache_url,
            "cache_kinds": tuple(cache_kinds),
            "model_pin": ModelPin(model, fingerprint, pin),  # one pin for the sync and asyncio clients
            **redis_options,
        }
        self.url = url
        self.client = EmbeddingClient.from_url(url, **self._options)
        self._async: AsyncEmbeddingClient | None = None

    @property
    def async_client(self) -> AsyncEmbeddingClient:
        """The asyncio client, made on first use (inside the event loop that will use it)."""
        if self._async is None:
            self._async = AsyncEmbeddingClient.from_url(self.url, **self._options)
        return self._async

    def embed_query(self, text: str) -> list[float]:
        """The vector of one question."""
        return self.client.embed_query(text, truncate=self.truncate)

    def embed_documents(self, texts: list[str] | Sequence[str]) -> list[list[float]]:
        """The vectors of documents, in input order."""
        return self.client.embed_documents(texts, truncate=self.truncate)

    async def aembed_query(self, text: str) -> list[float]:
        """The vector of one question, awaitable."""
        return await self.async_client.embed_query(text, truncate=self.truncate)

    async def aembed_documents(self, texts: list[str] | Sequence[str]) -> list[list[float]]:
        """The vectors of documents, in input order, awaitable."""
        return await self.async_client.embed_documents(texts, truncate=self.truncate)

    def close(self) -> None:
        """Release the sync client's connections (the async one closes with ``aclose``)."""
        self.client.close()

    async def aclose(self) -> None:
        """Release both clients' connections."""
        self.client.close()
        if self._async is not None:
            await self._async.aclose()
            self._async = None
