"""The request bodies the front door accepts: OpenAI's embeddings request and embedq's own."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request, plus embedq's optional kind and truncate."""

    input: str | list[str] | list[int] | list[list[int]]
    """Texts; token-id arrays parse so that the route can say why they are refused."""
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    embedq_kind: Literal["query", "passage"] | None = Field(default=None)
    embedq_truncate: bool | None = None


class EmbedRequest(BaseModel):
    """embedq's native shape: texts of one kind (and the model, if not the default queue's)."""

    texts: list[str]
    model: str | None = None
    kind: Literal["query", "passage"] = "query"
    truncate: bool | None = None
