"""The asyncio producer, for async chatbot APIs: the same calls as ``EmbeddingClient``, awaitable."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis.asyncio

from .base import ClientBase
from .call import Call, check_pushed, redis_errors


class AsyncEmbeddingClient(ClientBase):
    """Embeds texts through the embedq workers without blocking the event loop."""

    redis_class = redis.asyncio.Redis

    async def send(self, *calls: Call, limit: int | None = None) -> None:
        """Push the unsent requests of ``calls`` (at most ``limit`` of each) onto the queue, in
        order; ``QueueFull`` if the queue already holds ``max_queue`` requests."""
        with redis_errors(self._where):
            await self.clock.sync_async(self.redis)
            for keys, args in self._pushes(calls, limit):
                pushed = await self._enqueue(keys=keys, args=args)
                check_pushed(int(pushed), keys[0], self.max_queue)

    async def wait(self, call: Call) -> np.ndarray:
        """Wait until every request of ``call`` is answered; the vectors in input order."""
        while not call.done:
            if call.room:
                await self.send(call, limit=call.room)
            with redis_errors(self._where):
                popped = await self.redis.blpop(call.pending_keys(), timeout=call.remaining())
            if popped is None:
                call.remaining()  # raises EmbeddingTimeout when the time is up
                continue
            call.accept(*popped)
        return call.result()

    async def embed(
        self, texts: Sequence[str], kind: str = "query", *, truncate: bool | None = None
    ) -> np.ndarray:
        """Vectors for ``texts`` as a float32 matrix (one unit-length row per text, input order)."""
        return await self.embed_call(self.call(texts, kind, truncate=truncate))

    async def embed_call(self, call: Call) -> np.ndarray:
        """Send ``call`` a window at a time and wait for all of it (``call`` keeps the replies:
        token counts, truncated texts, timings)."""
        if not call.texts:
            return np.zeros((0, 0), dtype=np.float32)
        if self.cache is not None:
            call.use_cached(await self.cache.alookup(call.kind, call.texts, self.redis, call.pin))
        if call.room:
            await self.send(call, limit=call.room)  # the rest stream in as replies come (see Call)
        vectors = await self.wait(call)
        self.model_pin.learn(call)
        return vectors

    async def embed_query(self, text: str, *, truncate: bool | None = None) -> list[float]:
        """One question's vector, encoded with the model's query prefix."""
        return (await self.embed([text], "query", truncate=truncate))[0].tolist()

    async def embed_queries(self, texts: Sequence[str], *, truncate: bool | None = None) -> list[list[float]]:
        """Several questions' vectors, in input order."""
        return (await self.embed(texts, "query", truncate=truncate)).tolist()

    async def embed_documents(
        self, texts: Sequence[str], *, truncate: bool | None = None
    ) -> list[list[float]]:
        """Documents' vectors (passage prefix), in input order; split into max-batch requests."""
        return (await self.embed(texts, "passage", truncate=truncate)).tolist()

    async def aclose(self) -> None:
        """Release the connection pools."""
        if self.cache is not None:
            await self.cache.redis.aclose()
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
