"""What every route of one app shares: its settings, its one client, its metrics, and the served
models read from the workers' heartbeats (reused for ``MODELS_TTL_S``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from ..aio import AsyncEmbeddingClient
from ..protocol import Heartbeat
from ..workers import live_workers_async
from .errors import ApiError
from .metrics import Metrics
from .settings import ApiSettings

MODELS_TTL_S = 1.0
"""How long the list of served models (from the workers' heartbeats) is reused."""


@dataclass
class AppState:
    """The shared state of one app (``app.state.embedq``)."""

    settings: ApiSettings
    client: AsyncEmbeddingClient
    metrics: Metrics = field(default_factory=Metrics)
    _models: dict[str, Heartbeat] = field(default_factory=dict)
    _models_at: float = -1.0

    async def live_models(self) -> dict[str, Heartbeat]:
        """Model name -> a heartbeat of a live worker serving it, read now."""
        out: dict[str, Heartbeat] = {}
        for beat in (await live_workers_async(self.client.redis, self.client.keys)).values():
            if beat.dim:  # an unreadable heartbeat says nothing of a model
                out.setdefault(beat.model, beat)
        return out

    async def served_models(self) -> dict[str, Heartbeat]:
        """``live_models``, read at most once per MODELS_TTL_S: not two Redis round trips a request."""
        now = time.monotonic()
        if now - self._models_at > MODELS_TTL_S or not self._models:
            self._models = await self.live_models()
            self._models_at = now
        return self._models

    async def models_or_503(self, *, cached_ok: bool) -> dict[str, Heartbeat]:
        """The served models (cached for a moment if ``cached_ok``); 503 when Redis is unreachable."""
        try:
            return await (self.served_models() if cached_ok else self.live_models())
        except Exception as exc:
            raise ApiError(
                503, f"cannot reach Redis: {exc}", kind="service_unavailable", code="redis_unavailable"
            ) from exc


def state_of(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    state: AppState = request.app.state.embedq
    return state
