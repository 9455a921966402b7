"""The reference: a sentence-transformers model called directly in this process, as the design
record's in-process ``E5Embeddings`` did. Its vectors are what every queue path must reproduce
(tests, ``embedq eval``), and its timings are the in-process baseline of every benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class ReferenceModel:
    """One model on the CPU, encoded with sentence-transformers' own ``prompt`` argument (so an
    instruction model pools exactly as its authors intended), normalized."""

    def __init__(self, model: str, *, threads: int = 2) -> None:
        from embedq.worker.encoder import set_thread_env

        set_thread_env(threads)
        import torch
        from sentence_transformers import SentenceTransformer

        self.torch = torch
        torch.set_num_threads(threads)
        self.name = model
        self.model: Any = SentenceTransformer(model, device="cpu")
        self.model.eval()

    @property
    def threads(self) -> int:
        """Torch's intra-op threads now."""
        return int(self.torch.get_num_threads())

    def set_threads(self, threads: int) -> None:
        """Change torch's intra-op threads (the benchmarks sweep them)."""
        self.torch.set_num_threads(threads)

    @property
    def prompts(self) -> dict[str, str]:
        """The model's own named prompts (empty for a model without any)."""
        return dict(getattr(self.model, "prompts", {}) or {})

    def encode(self, texts: Sequence[str], prefix: str = "", batch_size: int | None = None) -> np.ndarray:
        """Unit-length float32 vectors of ``texts``, each encoded after ``prefix``; one model call
        per ``batch_size`` texts (default: all at once)."""
        vectors = self.model.encode(
            list(texts),
            prompt=prefix,
            batch_size=batch_size or max(len(texts), 1),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
