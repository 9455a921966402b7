"""The front door's routes, at module level over the app's shared state (``state_of``)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..errors import EmbedqError
from .errors import ApiError, from_embedq
from .schemas import EmbeddingsRequest, EmbedRequest
from .state import AppState, state_of

router = APIRouter()


async def embed(
    state: AppState, texts: list[str], kind: str, truncate: bool | None
) -> tuple[np.ndarray, int]:
    """Vectors and token count of ``texts``, after the front door's own limits."""
    settings = state.settings
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
    call = state.client.call(texts, kind, truncate=truncate)
    try:
        vectors = await state.client.embed_call(call)
    except EmbedqError as exc:
        raise from_embedq(exc) from exc
    return vectors, call.tokens


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    """OpenAI's embeddings endpoint: the named model must be served by a live worker."""
    state = state_of(request)
    models = await state.models_or_503(cached_ok=True)
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
        raise ApiError(400, "input is empty", kind="invalid_request_error", code="empty_input", param="input")
    vectors, tokens = await embed(state, texts, body.embedq_kind or state.settings.kind, body.embedq_truncate)
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


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The models live workers serve now."""
    models = await state_of(request).models_or_503(cached_ok=False)
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "embedq"} for m in sorted(models)],
    }


@router.post("/embed")
async def native(body: EmbedRequest, request: Request) -> dict[str, Any]:
    """embedq's own shape: texts of one kind, with truncate."""
    if not body.texts:
        raise ApiError(400, "texts is empty", kind="invalid_request_error", code="empty_input", param="texts")
    vectors, tokens = await embed(state_of(request), body.texts, body.kind, body.truncate)
    return {"vectors": vectors.tolist(), "dim": int(vectors.shape[1]), "tokens": tokens}


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """200 only while Redis answers and a worker is live."""
    state = state_of(request)
    try:
        models = await state.live_models()
    except Exception as exc:
        return JSONResponse({"ok": False, "error": f"cannot reach Redis: {exc}"}, status_code=503)
    if not models:
        return JSONResponse(
            {"ok": False, "error": f"no live worker on {state.settings.queue!r}"}, status_code=503
        )
    return JSONResponse({"ok": True, "models": sorted(models)})


@router.get("/metrics")
async def prometheus(request: Request) -> PlainTextResponse:
    """Requests per route and status, and the query cache's hit ratio when one is used."""
    state = state_of(request)
    text = state.metrics.render()
    cache = state.client.cache
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
