"""A model-free encoder for unit tests: deterministic unit vectors, a record of every call."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

POISON = "POISON"
"""A text containing this makes the fake encoder raise, as a broken model input would."""


def fake_vector(kind: str, text: str, dim: int = 8) -> np.ndarray:
    """The unit vector the fake encoder gives ``text`` of ``kind``."""
    seed = int.from_bytes(hashlib.sha256(f"{kind}|{text}".encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class CallRecorder:
    """Records each encode call's size and the most calls ever running at once."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    @contextmanager
    def recording(self, size: int) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append(size)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


class FakeEncoder:
    """Implements the worker's ``Encoder`` protocol; records batch sizes and concurrency."""

    def __init__(
        self, dim: int = 8, delay: float = 0.0, max_tokens: int | None = None, ms_per_token: float = 0.0
    ) -> None:
        self.name = "fake"
        self.backend = "fake"
        self.prefix_source = "fake encoder"
        self.fingerprint = f"fake-{dim}"
        self.dim = dim
        self.max_tokens = max_tokens
        """A window in whitespace-separated words (None: none), to test the worker's checks."""
        self.prefixes = {"query": "query: ", "passage": "passage: "}
        self.delay = delay
        self.ms_per_token = ms_per_token
        """Encode time like a real model's: texts x padded tokens x this, on top of ``delay``."""
        self.recorder = CallRecorder()

    @property
    def calls(self) -> list[int]:
        return self.recorder.calls

    @property
    def max_active(self) -> int:
        return self.recorder.max_active

    def token_counts(self, texts: Sequence[str], kinds: Sequence[str]) -> list[int]:
        return [len((self.prefixes[k] + t).split()) + 2 for k, t in zip(kinds, texts, strict=True)]

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        with self.recorder.recording(len(texts)):
            busy = self.delay
            if self.ms_per_token:
                counts = self.token_counts(texts, kinds)
                window = self.max_tokens or max(counts)
                busy += len(texts) * min(max(counts), window) * self.ms_per_token / 1000.0
            if busy:
                time.sleep(busy)
            if any(POISON in t for t in texts):
                raise RuntimeError("the model cannot encode this text")
            return np.stack([fake_vector(k, t, self.dim) for k, t in zip(kinds, texts, strict=True)])


def build(settings: object) -> FakeEncoder:
    """For worker processes (``EMBED_ENCODER=tests.support.fake_encoder:build``): a model-free
    encoder of ``EMBED_TEST_DIM`` dimensions (default 384), ``EMBED_TEST_ENCODE_DELAY`` s a batch,
    plus ``EMBED_TEST_MS_PER_TOKEN`` ms per text and padded token (a model's cost shape)."""
    encoder = FakeEncoder(
        dim=int(os.environ.get("EMBED_TEST_DIM", "384")),
        delay=float(os.environ.get("EMBED_TEST_ENCODE_DELAY", "0")),
        max_tokens=int(os.environ["EMBED_TEST_WINDOW"]) if os.environ.get("EMBED_TEST_WINDOW") else None,
        ms_per_token=float(os.environ.get("EMBED_TEST_MS_PER_TOKEN", "0")),
    )
    encoder.name = "fake-model"
    return encoder
