"""``embedq serve``: an OpenAI-compatible HTTP front door to the workers (extra ``api``; no torch).

``POST /v1/embeddings`` speaks OpenAI's embeddings API, so LangChain's and LlamaIndex's OpenAI
classes and the openai SDKs in every language work unchanged; ``POST /embed`` keeps embedq's own
shape (kind, truncate); ``GET /v1/models`` lists what the live workers serve; ``/healthz`` is
200 only while Redis answers and a worker is live; ``/metrics`` counts requests per route and
status. Every error has OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``).
One ``AsyncEmbeddingClient`` per process.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import defaults
from .aio import AsyncEmbeddingClient
from .defaults import setting
from .errors import (
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingTimeout,
    EmbedqError,
    InvalidInput,
    QueueFull,
)
from .protocol import KINDS, Heartbeat
from .workers import live_workers_async

MODELS_TTL_S = 1.0
"""How long the list of served models (from the workers' heartbeats) is reused."""


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """The front door's settings: environment variables, then ``embedq serve`` flags."""

    redis_url: str = defaults.REDIS_URL
    queue: str = defaults.QUEUE
    timeout: float = defaults.TIMEOUT_S
    kind: str = defaults.API_KIND
    """The kind of an OpenAI request's texts unless it says ``"embedq_kind"``."""
    max_inputs: int = defaults.API_MAX_INPUTS
    max_text_chars: int = defaults.MAX_TEXT_CHARS
    max_body_bytes: int = defaults.API_MAX_BODY_BYTES
    """0: enough for ``max_inputs`` texts of ``max_text_chars`` characters as JSON."""
    cache_url: str | None = None
    """The query cache's Redis (the workers' ``EMBED_CACHE_URL``): repeats answered from it."""

    @property
    def body_cap(self) -> int:
        """The largest request body read (``max_body_bytes``, or what the largest valid one needs)."""
        return self.max_body_bytes or self.max_inputs * (self.max_text_chars * 6 + 8) + 65536

    @classmethod
    def from_env(cls, **overrides: Any) -> ApiSettings:
        """Settings from the environment (``embedq.defaults.ENV``), ``overrides`` (flags) on top."""
        values: dict[str, Any] = {
            "redis_url": setting("redis_url"),
            "queue": setting("queue"),
            "timeout": setting("timeout"),
            "kind": setting("api_kind"),
            "max_inputs": setting("api_max_inputs"),
            "max_text_chars": setting("max_text_chars"),
            "max_body_bytes": setting("api_max_body_bytes"),
            "cache_url": setting("cache_url"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["kind"] not in KINDS:
            raise ValueError(f"EMBED_API_KIND must be 'query' or 'passage', got {values['kind']!r}")
        return cls(**values)


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, kind: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers: dict[str, str] = {}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class BodyLimit:
    """413 for a request body over ``limit`` bytes, by its Content-Length or while a chunked body
    is read: nothing larger is buffered."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._refuse(send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        import json

        body = json.dumps(
            error_body(f"request body over {self.limit} bytes", "invalid_request_error", "request_too_large")
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request, plus embedq's optional kind and truncate."""

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    embedq_kind: Literal["query", "passage"] | None = Field(default=None)
    embedq_truncate: bool | None = None


class EmbedRequest(BaseModel):
    """embedq's native shape: texts of one kind."""

    texts: list[str]
    kind: Literal["query", "passage"] = "query"
    truncate: bool | None = None


class Metrics:
    """Requests per route and status, and their latency (Prometheus text format)."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, int]] = Counter()
        self.seconds: dict[str, float] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.count[(route, status)] += 1
        self.seconds[route] = self.seconds.get(route, 0.0) + seconds

    def render(self) -> str:
        lines = ["# TYPE embedq_api_requests_total counter"]
        lines += [
            f'embedq_api_requests_total{{route="{r}",status="{s}"}} {n}'
            for (r, s), n in sorted(self.count.items())
        ]
        lines.append("# TYPE embedq_api_request_seconds_total counter")
        lines += [
            f'embedq_api_request_seconds_total{{route="{r}"}} {v:.6f}'
            for r, v in sorted(self.seconds.items())
        ]
        return "\n".join(lines) + "\n"


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The ASGI app (``uvicorn`` runs it; ``embedq serve`` does that)."""
    settings = settings or ApiSettings.from_env()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = AsyncEmbeddingClient.from_url(
            settings.redis_url, queue=settings.queue, timeout=settings.timeout, cache_url=settings.cache_url
        )
        app.state.embedq = client
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(title="embedq", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=settings.body_cap)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, exc.kind, exc.code, exc.param),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{first.get('msg', 'invalid request')} ({param})" if param else str(first.get("msg"))
        return JSONResponse(
            error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
        )

    async def live_models(client: AsyncEmbeddingClient) -> dict[str, Heartbeat]:
        out: dict[str, Heartbeat] = {}
        for beat in (await live_workers_async(client.redis, client.keys)).values():
            if beat.dim:  # an unreadable heartbeat says nothing of a model
                out.setdefault(beat.model, beat)
        return out

    cached: dict[str, Any] = {"at": -1.0, "models": {}}

    async def served_models(client: AsyncEmbeddingClient) -> dict[str, Heartbeat]:
        """``live_models``, read at most once per MODELS_TTL_S: not two Redis round trips a request."""
        now = time.monotonic()
        if now - cached["at"] > MODELS_TTL_S or not cached["models"]:
            cached["models"] = await live_models(client)
            cached["at"] = now
        models: dict[str, Heartbeat] = cached["models"]
        return models

    async def embed(texts: list[str], kind: str, truncate: bool | None) -> tuple[np.ndarray, int]:
        if len(texts) > settings.max_inputs:
            raise ApiError(
                400, f"{len(texts)} inputs; at most {settings.max_inputs} per request",
                kind="invalid_request_error", code="too_many_inputs", param="input",
            )  # fmt: skip
        for i, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                raise ApiError(
                    400, f"input {i} has {len(text)} characters; the limit is {settings.max_text_chars}",
                    kind="invalid_request_error", code="text_too_long", param="input",
                )  # fmt: skip
        client: AsyncEmbeddingClient = app.state.embedq
        call = client.call(texts, kind, truncate=truncate)
        try:
            vectors = await client.embed_call(call)
        except InvalidInput as exc:
            raise ApiError(
                400, str(exc), kind="invalid_request_error", code="invalid_input", param="input"
            ) from exc
        except EmbeddingError as exc:
            raise ApiError(
                400, exc.message, kind="invalid_request_error", code=exc.code, param="input"
            ) from exc
        except QueueFull as exc:
            error = ApiError(429, str(exc), kind="rate_limit_error", code="queue_full")
            error.headers["Retry-After"] = "1"
            raise error from exc
        except EmbeddingTimeout as exc:
            raise ApiError(504, str(exc), kind="timeout", code="timeout") from exc
        except (EmbeddingConnectionError, EmbedqError) as exc:
            error = ApiError(503, str(exc), kind="service_unavailable", code="redis_unavailable")
            error.headers["Retry-After"] = "5"
            raise error from exc
        return vectors, call.tokens

    async def models_or_503(cached_ok: bool) -> dict[str, Heartbeat]:
        """The served models (cached for a moment if ``cached_ok``); 503 when Redis is unreachable."""
        client: AsyncEmbeddingClient = app.state.embedq
        try:
            return await (served_models(client) if cached_ok else live_models(client))
        except Exception as exc:
            raise ApiError(
                503, f"cannot reach Redis: {exc}", kind="service_unavailable", code="redis_unavailable"
            ) from exc

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        models = await models_or_503(cached_ok=True)
        if body.model not in models:
            served = ", ".join(sorted(models)) or "none: no worker is live"
            raise ApiError(
                404, f"model {body.model!r} is not served here (served: {served})",
                kind="invalid_request_error", code="model_not_found", param="model",
            )  # fmt: skip
        beat = models[body.model]
        if body.dimensions is not None and body.dimensions != beat.dim:
            raise ApiError(
                400, f"dimensions {body.dimensions} is not supported: {body.model} gives {beat.dim}",
                kind="invalid_request_error", code="unsupported_dimensions", param="dimensions",
            )  # fmt: skip
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ApiError(
                400, "input is empty", kind="invalid_request_error", code="empty_input", param="input"
            )
        vectors, tokens = await embed(texts, body.embedq_kind or settings.kind, body.embedq_truncate)
        data = []
        for i, row in enumerate(vectors):
            embedding: Any = (
                base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else row.tolist()
            )
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        models = await models_or_503(cached_ok=False)
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "embedq"} for m in sorted(models)
            ],
        }

    @app.post("/embed")
    async def native(body: EmbedRequest) -> dict[str, Any]:
        if not body.texts:
            raise ApiError(
                400, "texts is empty", kind="invalid_request_error", code="empty_input", param="texts"
            )
        vectors, tokens = await embed(body.texts, body.kind, body.truncate)
        return {"vectors": vectors.tolist(), "dim": int(vectors.shape[1]), "tokens": tokens}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        client: AsyncEmbeddingClient = app.state.embedq
        try:
            models = await live_models(client)
        except Exception as exc:
            return JSONResponse({"ok": False, "error": f"cannot reach Redis: {exc}"}, status_code=503)
        if not models:
            return JSONResponse(
                {"ok": False, "error": f"no live worker on {settings.queue!r}"}, status_code=503
            )
        return JSONResponse({"ok": True, "models": sorted(models)})

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        text = metrics.render()
        cache = app.state.embedq.cache
        if cache is not None:
            stats = cache.stats()
            text += (
                "# TYPE embedq_api_cache_lookups_total counter\n"
                f'embedq_api_cache_lookups_total{{result="hit"}} {stats["hits"]}\n'
                f'embedq_api_cache_lookups_total{{result="miss"}} {stats["misses"]}\n'
                "# TYPE embedq_api_cache_hit_ratio gauge\n"
                f"embedq_api_cache_hit_ratio {stats['hit_ratio']}\n"
            )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app
