"""The ASGI app: one client per process, the body limit, the metrics middleware, the routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from ..aio import AsyncEmbeddingClient
from .errors import ApiError, api_error, invalid
from .limits import BodyLimit
from .routes import router
from .settings import ApiSettings
from .state import AppState


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The ASGI app (``uvicorn`` runs it; ``embedq serve`` does that)."""
    settings = settings or ApiSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients = {
            queue: AsyncEmbeddingClient.from_url(
                settings.redis_url, queue=queue, timeout=settings.timeout, cache_url=settings.cache_url
            )
            for queue in settings.queues
        }
        app.state.embedq = AppState(settings, clients)
        try:
            yield
        finally:
            for client in clients.values():
                await client.aclose()

    app = FastAPI(title="embedq", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=settings.body_cap)
    app.middleware("http")(count)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.include_router(router)
    return app


async def count(request: Request, call_next: Any) -> Any:
    """Middleware: every response counted by route and status, with its latency."""
    started = time.perf_counter()
    response = await call_next(request)
    state: AppState = request.app.state.embedq
    route = request.scope.get("route")  # the route's template: the labels stay bounded
    label = getattr(route, "path", None) or "unmatched"
    state.metrics.observe(label, response.status_code, time.perf_counter() - started)
    return response
