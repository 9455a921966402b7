"""embedq worker: takes requests from Redis, micro-batches them, encodes on the CPU, replies.

Import-light: torch and sentence-transformers load only when an encoder is built.
"""

from .batching import Batcher, BatchPolicy
from .settings import Settings

__all__ = ["BatchPolicy", "Batcher", "Settings"]
