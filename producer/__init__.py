"""embedq producer: the light client a chatbot API uses to embed texts (no torch needed)."""

from .aio import AsyncEmbeddingClient
from .call import Call
from .client import EmbeddingClient
from .embeddings import EmbedqEmbeddings
from .errors import (
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingTimeout,
    EmbedqError,
    InvalidInput,
    QueueFull,
)
from .protocol import DEFAULT_QUEUE, PROTOCOL_VERSION, Keys

__all__ = [
    "DEFAULT_QUEUE",
    "PROTOCOL_VERSION",
    "AsyncEmbeddingClient",
    "Call",
    "EmbeddingClient",
    "EmbeddingConnectionError",
    "EmbeddingError",
    "EmbeddingTimeout",
    "EmbedqEmbeddings",
    "EmbedqError",
    "InvalidInput",
    "Keys",
    "QueueFull",
]
