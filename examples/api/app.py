"""An example chatbot-side HTTP service that embeds through embedq: a producer in its habitat.

    pip install 'embedq[api]'
    REDIS_URL=redis://localhost:6379/0 uvicorn app:app --app-dir examples/api --port 8000
    curl -s localhost:8000/embed -H 'content-type: application/json' \\
         -d '{"texts": ["연남 카페 추천해줘"], "kind": "query"}'

One ``AsyncEmbeddingClient`` per process, opened and closed with the app. Every embedq error
maps to an HTTP status a caller can act on: a bad text is the caller's (422), a full queue or
no Redis is ours for now (503, retry), a timeout is a gateway timeout (504).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from embedq import (
    AsyncEmbeddingClient,
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingTimeout,
    InvalidInput,
    QueueFull,
)
from embedq.api import BodyLimit  # 413 over the limit, checked before the body is buffered
from embedq.defaults import setting

MAX_TEXTS = 64
"""Most texts one HTTP call may embed (split into worker-sized requests by the client)."""
MAX_TEXT_CHARS = setting("max_text_chars")
"""Longest text accepted: the workers' limit, refused here before it travels."""
MAX_BODY_BYTES = MAX_TEXTS * MAX_TEXT_CHARS * 6 + 4096
"""Largest request body read (413 beyond): enough for MAX_TEXTS texts of MAX_TEXT_CHARS characters
as JSON-escaped UTF-8."""


class EmbedRequest(BaseModel):
    """What a caller sends: texts of one kind."""

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    kind: Literal["query", "passage"] = "query"


class EmbedResponse(BaseModel):
    """One unit-length float vector per text, in input order."""

    vectors: list[list[float]]
    dim: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the embedq client with the app; close it on shutdown."""
    client = AsyncEmbeddingClient.from_url(
        setting("redis_url"),  # REDIS_URL, EMBED_QUEUE, EMBED_TIMEOUT, as embedq reads them
        queue=setting("queue"),
        timeout=setting("timeout"),
    )
    app.state.embedq = client
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(title="embedq example API", lifespan=lifespan)
app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)


@app.post("/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest) -> EmbedResponse:
    """Embed ``texts`` through the embedq workers."""
    client: AsyncEmbeddingClient = app.state.embedq
    too_long = [i for i, t in enumerate(body.texts) if len(t) > MAX_TEXT_CHARS]
    if too_long:
        raise HTTPException(
            422,
            detail={
                "code": "text_too_long",
                "message": f"text {too_long[0]} is over {MAX_TEXT_CHARS} characters",
            },
        )
    try:
        vectors = await client.embed(body.texts, body.kind)
    except InvalidInput as exc:
        raise HTTPException(422, detail={"code": "invalid_input", "message": str(exc)}) from exc
    except EmbeddingError as exc:  # refused by the worker: the caller's input
        raise HTTPException(422, detail={"code": exc.code, "message": exc.message}) from exc
    except QueueFull as exc:
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "1"}) from exc
    except EmbeddingTimeout as exc:
        raise HTTPException(504, detail=str(exc)) from exc
    except EmbeddingConnectionError as exc:
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "5"}) from exc
    return EmbedResponse(vectors=vectors.tolist(), dim=int(vectors.shape[1]))


@app.get("/healthz")
async def healthz() -> JSONResponse:
    """200 while Redis answers and at least one worker has a fresh heartbeat on the queue: an
    API that cannot get an answer is not ready."""
    client: AsyncEmbeddingClient = app.state.embedq
    keys = client.keys
    try:
        ids = [i.decode() if isinstance(i, bytes) else i for i in await client.redis.smembers(keys.workers)]
        live = int(await client.redis.exists(*(keys.heartbeat(i) for i in ids))) if ids else 0
    except Exception as exc:  # any failure to reach Redis makes this instance unready
        return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
    if not live:
        return JSONResponse(
            {"ok": False, "error": f"no live worker on queue {keys.queue!r}"}, status_code=503
        )
    return JSONResponse({"ok": True, "workers": live})
