"""Errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``), and the
mapping of every embedq exception to the HTTP status a caller can act on."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from ..errors import (
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingTimeout,
    EmbedqError,
    InvalidInput,
    QueueFull,
)


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


def from_embedq(exc: EmbedqError) -> ApiError:
    """The HTTP error for an embedq exception: the caller's input 400, a full queue 429, no answer
    in time 504, Redis unreachable 503 (the last two with Retry-After)."""
    if isinstance(exc, InvalidInput):
        return ApiError(400, str(exc), kind="invalid_request_error", code="invalid_input", param="input")
    if isinstance(exc, EmbeddingError):
        return ApiError(400, exc.message, kind="invalid_request_error", code=exc.code, param="input")
    if isinstance(exc, QueueFull):
        error = ApiError(429, str(exc), kind="rate_limit_error", code="queue_full")
        error.headers["Retry-After"] = "1"
        return error
    if isinstance(exc, EmbeddingTimeout):
        return ApiError(504, str(exc), kind="timeout", code="timeout")
    assert isinstance(exc, (EmbeddingConnectionError, EmbedqError))
    error = ApiError(503, str(exc), kind="service_unavailable", code="redis_unavailable")
    error.headers["Retry-After"] = "5"
    return error


async def send_error(
    send: Send,
    status: int,
    message: str,
    kind: str,
    code: str,
    *,
    headers: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> None:
    """An error in OpenAI's shape sent straight from an ASGI middleware (before any route runs)."""
    extra = dict(headers or {})
    if retry_after is not None:
        extra["retry-after"] = str(retry_after)
    raw = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in extra.items())]
    body = json.dumps(error_body(message, kind, code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    """Handler: an ``ApiError`` as its JSON body and status."""
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.message, exc.kind, exc.code, exc.param), status_code=exc.status, headers=exc.headers
    )


async def invalid(request: Request, exc: Exception) -> JSONResponse:
    """Handler: a request body that does not fit the schema, as a 400 naming the field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"{first.get('msg', 'invalid request')} ({param})" if param else str(first.get("msg"))
    return JSONResponse(
        error_body(message, "invalid_request_error", "invalid_request", param), status_code=400
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Handler: the framework's own errors (unknown path, wrong method, unreadable body) in
    OpenAI's shape too, never ``{"detail": ...}``."""
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(
        error_body(str(exc.detail), kind, f"http_{exc.status_code}"),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )
