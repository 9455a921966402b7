"""An encoder for integration tests: the real bundled model, except that POISON texts fail.

Loaded by a worker process through ``EMBED_ENCODER=tests.support.faulty_encoder:build``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tests.support.fake_encoder import POISON
from worker.encoder import SentenceTransformerEncoder
from worker.settings import Settings


class FaultyEncoder(SentenceTransformerEncoder):
    """Raises for any batch holding a POISON text, like a model input it cannot handle."""

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        if any(POISON in t for t in texts):
            raise RuntimeError("tokenizer blew up on this input")
        return super().encode(texts, kinds)


def build(settings: Settings) -> FaultyEncoder:
    return FaultyEncoder(
        settings.model,
        device=settings.device,
        threads=settings.threads,
        query_prefix=settings.query_prefix,
        passage_prefix=settings.passage_prefix,
    )
