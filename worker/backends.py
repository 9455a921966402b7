"""Which encoder a worker's settings ask for: a custom factory (``EMBED_ENCODER``), an export on
ONNX Runtime or OpenVINO (``EMBED_BACKEND=onnx|openvino``, no torch), or sentence-transformers.
Each backend's module is imported only when chosen, so a torch-free worker never loads torch."""

from __future__ import annotations

import importlib

from .encoder import Encoder
from .settings import Settings


def build_encoder(settings: Settings) -> Encoder:
    """The encoder ``settings`` ask for."""
    if settings.encoder:
        module_name, _, attr = settings.encoder.partition(":")
        if not attr:
            raise ValueError(f"EMBED_ENCODER must look like 'module:callable', got {settings.encoder!r}")
        factory = getattr(importlib.import_module(module_name), attr)
        encoder: Encoder = factory(settings)
        return encoder
    if settings.backend in ("onnx", "openvino"):
        from .onnx_encoder import OnnxEncoder

        return OnnxEncoder.from_settings(settings)
    from .encoder import SentenceTransformerEncoder

    return SentenceTransformerEncoder.from_settings(settings)
