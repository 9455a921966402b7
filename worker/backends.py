"""Which encoder a worker's settings ask for: a custom factory (``EMBED_ENCODER``), an export on
ONNX Runtime or OpenVINO (``EMBED_BACKEND=onnx|openvino``, no torch), or sentence-transformers.
Each backend's module is imported only when chosen, so a torch-free worker never loads torch."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .encoder import Encoder
from .settings import Settings

DESCRIPTIVE = {"backend": "custom", "prefix_source": "encoder", "fingerprint": ""}
"""What a custom encoder may leave out, and what it then reports."""


class CustomEncoder:
    """A custom encoder (``EMBED_ENCODER``) made whole: what it lacks of ``DESCRIPTIVE`` takes the
    default there (no fingerprint keeps the query cache off); the rest is the encoder's own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self.prefixes: Mapping[str, str] = inner.prefixes
        self.max_tokens: int | None = inner.max_tokens
        self.backend: str = _text_attr(inner, "backend")
        self.prefix_source: str = _text_attr(inner, "prefix_source")
        self.fingerprint: str = _text_attr(inner, "fingerprint")

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        """The inner encoder's vectors."""
        return np.asarray(self.inner.encode(texts, kinds))

    def token_counts(self, texts: Sequence[str], kinds: Sequence[str]) -> list[int]:
        """The inner encoder's token counts."""
        return list(self.inner.token_counts(texts, kinds))


def _text_attr(inner: object, name: str) -> str:
    value = getattr(inner, name, None)
    return value if isinstance(value, str) else DESCRIPTIVE[name]


def build_encoder(settings: Settings) -> Encoder:
    """The encoder ``settings`` ask for."""
    if settings.encoder:
        module_name, _, attr = settings.encoder.partition(":")
        if not attr:
            raise ValueError(f"EMBED_ENCODER must look like 'module:callable', got {settings.encoder!r}")
        factory = getattr(importlib.import_module(module_name), attr)
        built = factory(settings)
        if all(isinstance(getattr(built, name, None), str) for name in DESCRIPTIVE):
            encoder: Encoder = built
            return encoder
        return CustomEncoder(built)
    if settings.backend in ("onnx", "openvino"):
        from .onnx_encoder import OnnxEncoder

        return OnnxEncoder.from_settings(settings)
    from .encoder import SentenceTransformerEncoder

    return SentenceTransformerEncoder.from_settings(settings)
