"""The encoder: texts of either kind in, normalized float32 vectors out, one call at a time.

``SentenceTransformerEncoder`` is the production one. Its prefixes decide whether the vectors
match a vector store built with the same model, so they are resolved explicitly and logged:
an override from the settings, else the model's own ``query``/``passage`` prompts, else the
E5 convention ``query: ``/``passage: `` for E5-family models, else none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
_E5_NAME = re.compile(r"(^|[/_-])e5([_-]|$)", re.IGNORECASE)
_PASSAGE_PROMPT_NAMES = ("passage", "document", "corpus")


class Encoder(Protocol):
    """Everything the worker reads from a model (a custom ``EMBED_ENCODER`` that lacks the
    descriptive attributes is wrapped by ``backends.build_encoder`` with their defaults)."""

    @property
    def name(self) -> str:
        """The model's name or path, as operators know it."""
        ...

    @property
    def backend(self) -> str:
        """What runs it: ``torch``, ``onnx``, ``openvino`` (``-int8`` when quantized), ``custom``."""
        ...

    @property
    def dim(self) -> int: ...

    @property
    def prefixes(self) -> Mapping[str, str]: ...

    @property
    def prefix_source(self) -> str:
        """Where the prefixes came from (settings, model prompts, E5 convention, export)."""
        ...

    @property
    def fingerprint(self) -> str:
        """What identifies these vectors (weights or export, backend, prefixes, window); "" for
        none, which keeps the query cache off."""
        ...

    @property
    def max_tokens(self) -> int | None:
        """The model's token window (texts longer than it are cut), or None if it has none."""
        ...

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        """One float32 row per text, unit length; ``kinds[i]`` is ``query`` or ``passage``."""
        ...

    def token_counts(self, texts: Sequence[str], kinds: Sequence[str]) -> list[int]:
        """How many tokens each text takes with its prefix and the special tokens, uncut."""
        ...


@dataclass(frozen=True)
class Prefixes:
    """The prefix per kind and where it came from (for the start log line)."""

    query: str
    passage: str
    source: str

    def as_dict(self) -> dict[str, str]:
        """``{"query": ..., "passage": ...}``."""
        return {"query": self.query, "passage": self.passage}


def is_e5(model_name: str) -> bool:
    """True for E5-family model ids or paths (``intfloat/multilingual-e5-large``, ``e5-base-v2``)."""
    return any(_E5_NAME.search(part) for part in re.split(r"[\\/]", model_name.rstrip("/\\")))


def resolve_prefixes(
    model_name: str,
    model_prompts: Mapping[str, str],
    *,
    query_override: str | None = None,
    passage_override: str | None = None,
) -> Prefixes:
    """Decide the query and passage prefixes; see the module docstring for the order."""
    own_query = model_prompts.get("query") or ""
    own_passage = next((model_prompts[n] for n in _PASSAGE_PROMPT_NAMES if model_prompts.get(n)), "")
    if own_query or own_passage:
        query, passage, source = own_query, own_passage, "model prompts"
    elif is_e5(model_name):
        query, passage, source = E5_PREFIXES["query"], E5_PREFIXES["passage"], "E5 convention"
    else:
        query, passage, source = "", "", "none (model has no prompts)"
    if query_override is not None or passage_override is not None:
        source = "settings"
        query = query if query_override is None else query_override
        passage = passage if passage_override is None else passage_override
    return Prefixes(query=query, passage=passage, source=source)


def set_thread_env(threads: int) -> None:
    """Cap OpenMP/MKL threads; must run before torch is imported to take full effect."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


class SentenceTransformerEncoder:
    """A sentence-transformers model on one device, normalized embeddings, explicit prefixes."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        threads: int = 2,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        set_thread_env(threads)
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.name = model
        self.backend = "torch"
        self.device = device
        self.threads = threads
        self.model = SentenceTransformer(model, device=device)
        self.model.eval()
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim() or 0)
        resolved = resolve_prefixes(
            model,
            dict(getattr(self.model, "prompts", {}) or {}),
            query_override=query_prefix,
            passage_override=passage_prefix,
        )
        self.prefix_source = resolved.source
        self.prefixes = resolved.as_dict()
        self.max_tokens: int | None = getattr(self.model, "max_seq_length", None)
        first = self.model[0] if len(self.model) else None
        self._lowercase = bool(getattr(first, "do_lower_case", False))
        # Instruction models pool without the prompt tokens: there the prompt must go through
        # sentence-transformers' prompt argument, one kind per call, to give the model's vectors.
        self._prompt_outside_pooling = any(
            getattr(module, "include_prompt", True) is False for module in self.model
        )
        self.fingerprint = fingerprint(
            {
                "backend": "torch",
                "model": model,
                "weights": weights_digest(self.model),
                "prefixes": self.prefixes,
                "max_tokens": self.max_tokens,
                "modules": [[type(m).__name__, getattr(m, "get_config_dict", dict)()] for m in self.model],
            }
        )
        """What identifies these vectors (the query cache keys on it)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SentenceTransformerEncoder:
        """The encoder a worker with these settings uses."""
        return cls(
            settings.model,
            device=settings.device,
            threads=settings.threads,
            query_prefix=settings.query_prefix,
            passage_prefix=settings.passage_prefix,
        )

    def encode(self, texts: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
        """Vectors for texts of mixed kinds, in order; one model call unless prompts are pooled apart."""
        if not self._prompt_outside_pooling:
            inputs = [self.prefixes[k] + t for k, t in zip(kinds, texts, strict=True)]
            return self._run(inputs, prompt="")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for kind in dict.fromkeys(kinds):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            out[rows] = self._run([texts[i] for i in rows], prompt=self.prefixes[kind])
        return out

    def token_counts(self, texts: Sequence[str], kinds: Sequence[str]) -> list[int]:
        """Tokens per text as the model's tokenizer counts them before cutting to its window
        (prefix and special tokens included; stripped and lowercased as sentence-transformers does)."""
        inputs = [(self.prefixes[k] + t).strip() for k, t in zip(kinds, texts, strict=True)]
        if self._lowercase:
            inputs = [t.lower() for t in inputs]
        encoded = self.model.tokenizer(inputs, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _run(self, inputs: list[str], *, prompt: str) -> np.ndarray:
        # prompt="" keeps sentence-transformers from adding a default prompt of its own.
        vectors = self.model.encode(
            inputs,
            prompt=prompt,
            batch_size=max(len(inputs), 1),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def fingerprint(parts: Mapping[str, object]) -> str:
    """A short stable hash of what decides a model's vectors (see ``Heartbeat.fingerprint``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def weights_digest(model: Any) -> str:
    """A digest of a torch model's weights: every tensor's name, shape and its first and last
    values. Cheap at start (e5-large's 2.2 GB are not read whole) and different for any other
    checkpoint, fine-tuned ones included."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(flat[:256].float().numpy().tobytes())
        h.update(flat[-256:].float().numpy().tobytes())
    return h.hexdigest()
