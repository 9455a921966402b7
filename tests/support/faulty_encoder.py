"""Encoders for integration tests: the real bundled model, except that POISON texts fail, and
optionally every encode takes ``EMBED_TEST_ENCODE_DELAY`` seconds longer (to make a window in
which a worker certainly holds a batch).

Loaded by a worker process through ``EMBED_ENCODER=tests.support.faulty_encoder:build``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from embedq.worker.encoder import SentenceTransformerEncoder
from embedq.worker.settings import Settings
from tests.support.fake_encoder import POISON


class FaultyEncoder(SentenceTransformerEncoder):
    """Raises for any batch holding a POISON text, like a model input it cannot handle."""

    delay = float(os.environ.get("EMBED_TEST_ENCODE_DELAY", "0"))

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        if self.delay and not texts[0].startswith("warm-up"):
            time.sleep(self.delay)
        if any(POISON in t for t in texts):
            raise RuntimeError("tokenizer blew up on this input")
        return super().encode(texts, kinds)


def build(settings: Settings) -> SentenceTransformerEncoder:
    return FaultyEncoder.from_settings(settings)
