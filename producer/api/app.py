"""The ASGI app: one client per process, the body limit, the metrics middleware, the routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..aio import AsyncEmbeddingClient
from .auth import Authenticate
from .errors import ApiError, api_error, http_error, invalid
from .limits import BodyLimit
from .routes import router
from .settings import ApiSettings
from .state import AppState

log = logging.getLogger("embedq.api")


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
    limits = {"limit": settings.max_body_bytes, "held_limit": settings.bodies_bytes}
    app.add_middleware(BodyLimit, **limits, timeout=settings.body_timeout)
    if settings.keys:
        app.add_middleware(Authenticate, keys=settings.keys)  # outside the body limit: no key, no read
    app.middleware("http")(count)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(router)
    return app


async def count(request: Request, call_next: Any) -> Any:
    """Middleware: every response counted by route, status and API key name, with its latency,
    and logged with the key's name (never the key)."""
    started = time.perf_counter()
    response = await call_next(request)
    seconds = time.perf_counter() - started
    state: AppState = request.app.state.embedq
    route = request.scope.get("route")  # the route's template: the labels stay bounded
    label = getattr(route, "path", None) or "unmatched"
    key = request.scope.get("state", {}).get("key_name", "")
    state.metrics.observe(label, response.status_code, seconds, key)
    log.info(
        "%s %s %d %.1f ms key=%s", request.method, label, response.status_code, seconds * 1000, key or "-"
    )
    return response
