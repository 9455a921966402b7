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
from .state import AppState, Served, state_of

router = APIRouter()


async def embed(
    state: AppState, texts: list[str], kind: str, truncate: bool | None, served: Served | None = None
) -> tuple[np.ndarray, int, str]:
    """Vectors, token count and the answering model's served name for ``texts``, after the front
    door's own limits: on ``served``'s queue, pinned to it (a worker of another model refuses),
    or on the default queue."""
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
    client = state.clients[served.queue] if served else state.client
    try:
        call = client.call(texts, kind, truncate=truncate, model=served.name if served else None)
        vectors = await client.embed_call(call)
    except EmbedqError as exc:
        raise from_embedq(exc) from exc
    return vectors, call.tokens, call.served_by or (served.name if served else "")


TOKEN_IDS = (
    "input is token ids; embedq embeds text with the model's own tokenizer, and ids of another "
    "tokenizer (OpenAI's tiktoken) cannot be turned back into the text exactly: send strings. "
    "LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False) sends strings."
)


def texts_of(raw: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The texts of an OpenAI ``input``, or a 400: empty, or token-id arrays (what LangChain's
    ``OpenAIEmbeddings`` sends by default), refused with what to send instead."""
    items = [raw] if isinstance(raw, str) else list(raw)
    if not items:
        raise ApiError(400, "input is empty", kind="invalid_request_error", code="empty_input", param="input")
    if not all(isinstance(item, str) for item in items):
        raise ApiError(400, TOKEN_IDS, kind="invalid_request_error", code="token_ids", param="input")
    return [item for item in items if isinstance(item, str)]


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    """OpenAI's embeddings endpoint: the named model must be served by a live worker."""
    state = state_of(request)
    served = await state.find(body.model)
    beat = served.beat
    if body.dimensions is not None and body.dimensions != beat.dim:
        raise ApiError(
            400, f"dimensions {body.dimensions} is not supported: {body.model} gives {beat.dim}",
            kind="invalid_request_error", code="unsupported_dimensions", param="dimensions",
        )  # fmt: skip
    texts = texts_of(body.input)
    kind = body.embedq_kind or state.settings.kind
    vectors, tokens, answered = await embed(state, texts, kind, body.embedq_truncate, served)
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
        "model": answered or served.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The models live workers serve now, each once, with its dimension and fingerprint."""
    models = await state_of(request).models_or_503(cached_ok=False)
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "embedq",
                "embedq_dimensions": s.beat.dim,
                "embedq_fingerprint": s.beat.fingerprint,
                "embedq_queue": s.queue,
            }
            for name, s in sorted(models.items())
        ],
    }


@router.post("/embed")
async def native(body: EmbedRequest, request: Request) -> dict[str, Any]:
    """embedq's own shape: texts of one kind, with truncate, and the model if not the default queue's."""
    if not body.texts:
        raise ApiError(400, "texts is empty", kind="invalid_request_error", code="empty_input", param="texts")
    state = state_of(request)
    served = await state.find(body.model) if body.model else None
    vectors, tokens, answered = await embed(state, body.texts, body.kind, body.truncate, served)
    return {"vectors": vectors.tolist(), "dim": int(vectors.shape[1]), "tokens": tokens, "model": answered}


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """200 only while Redis answers and a worker is live."""
    state = state_of(request)
    try:
        models = await state.live_models()
    except Exception as exc:
        return JSONResponse({"ok": False, "error": f"cannot reach Redis: {exc}"}, status_code=503)
    if not models:
        queues = ", ".join(map(repr, state.settings.queues))
        return JSONResponse({"ok": False, "error": f"no live worker on {queues}"}, status_code=503)
    return JSONResponse({"ok": True, "models": sorted(models)})


@router.get("/metrics")
async def prometheus(request: Request) -> PlainTextResponse:
    """Requests per route and status, and the query cache's hit ratio when one is used."""
    state = state_of(request)
    text = state.metrics.render()
    caches = [c.cache for c in state.clients.values() if c.cache is not None]
    if caches:
        hits, misses = sum(c.hits for c in caches), sum(c.misses for c in caches)
        ratio = round(hits / (hits + misses), 4) if hits + misses else 0.0
        stats = {"hits": hits, "misses": misses, "hit_ratio": ratio}
        text += (
            "# TYPE embedq_api_cache_lookups_total counter\n"
            f'embedq_api_cache_lookups_total{{result="hit"}} {stats["hits"]}\n'
            f'embedq_api_cache_lookups_total{{result="miss"}} {stats["misses"]}\n'
            "# TYPE embedq_api_cache_hit_ratio gauge\n"
            f"embedq_api_cache_hit_ratio {stats['hit_ratio']}\n"
        )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
