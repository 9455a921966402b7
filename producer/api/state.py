"""What every route of one app shares: its settings, one client per queue (each queue is served
by workers of one model), its metrics, and the served models read from the workers' heartbeats
(reused for ``MODELS_TTL_S``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fastapi import Request

from ..aio import AsyncEmbeddingClient
from ..protocol import Heartbeat
from ..workers import live_workers_async
from .errors import ApiError
from .metrics import Metrics
from .settings import ApiSettings

log = logging.getLogger("embedq.api")

MODELS_TTL_S = 1.0
"""How long the list of served models (from the workers' heartbeats) is reused."""


@dataclass(frozen=True)
class Served:
    """A model live workers serve: its name, the queue its requests go to, a heartbeat of it."""

    name: str
    queue: str
    beat: Heartbeat


@dataclass
class AppState:
    """The shared state of one app (``app.state.embedq``)."""

    settings: ApiSettings
    clients: dict[str, AsyncEmbeddingClient]
    """One client per queue, the default queue's first."""
    metrics: Metrics = field(default_factory=Metrics)
    _models: dict[str, Served] = field(default_factory=dict)
    _models_at: float = -1.0

    @property
    def client(self) -> AsyncEmbeddingClient:
        """The default queue's client."""
        return self.clients[self.settings.queue]

    async def live_models(self) -> dict[str, Served]:
        """Served name -> where it is served, read now from every queue's live heartbeats. A
        model is listed once; a name served with two fingerprints is logged (the first wins, and
        the pin keeps its calls to it)."""
        out: dict[str, Served] = {}
        for queue, client in self.clients.items():
            for beat in (await live_workers_async(client.redis, client.keys)).values():
                if not beat.dim:  # an unreadable heartbeat says nothing of a model
                    continue
                name = beat.served_name or beat.model
                known = out.get(name)
                if known is None:
                    out[name] = Served(name, queue, beat)
                elif known.beat.fingerprint != beat.fingerprint:
                    log.warning(
                        "model %r is served with two fingerprints (%s on %r, %s on %r)",
                        name, known.beat.fingerprint, known.queue, beat.fingerprint, queue,
                    )  # fmt: skip
        return out

    async def served_models(self) -> dict[str, Served]:
        """``live_models``, read at most once per MODELS_TTL_S: not two Redis round trips a request."""
        now = time.monotonic()
        if now - self._models_at > MODELS_TTL_S or not self._models:
            self._models = await self.live_models()
            self._models_at = now
        return self._models

    async def models_or_503(self, *, cached_ok: bool) -> dict[str, Served]:
        """The served models (cached for a moment if ``cached_ok``); 503 when Redis is unreachable."""
        try:
            return await (self.served_models() if cached_ok else self.live_models())
        except Exception as exc:
            raise ApiError(
                503, f"cannot reach Redis: {exc}", kind="service_unavailable", code="redis_unavailable"
            ) from exc

    async def find(self, model: str) -> Served:
        """Where ``model`` (a served name, or a model's id or path) is served; 404 at once if by
        no live worker."""
        models = await self.models_or_503(cached_ok=True)
        found = models.get(model) or next((s for s in models.values() if s.beat.model == model), None)
        if found is None:
            served = ", ".join(sorted(models)) or "none: no worker is live"
            raise ApiError(
                404, f"model {model!r} is not served here (served: {served})",
                kind="invalid_request_error", code="model_not_found", param="model",
            )  # fmt: skip
        return found


def state_of(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    state: AppState = request.app.state.embedq
    return state
