"""A model with multilingual-e5-large's exact architecture and random weights, built offline, for
benchmarks at production scale: its vectors mean nothing, but an encode costs what e5-large's
costs (the same XLM-R encoder: 24 layers, hidden 1024, 16 heads, FFN 4096, 514 positions; mean
pooling, normalized, ``query: ``/``passage: `` prompts), so the queue's behaviour at that cost
can be measured without the hub. ~2.2 GB on disk: build it in a temporary folder, never commit.

No XLM-R tokenizer is available offline here, so the model tokenizes with the bundled
all-MiniLM-L6-v2's WordPiece tokenizer (30,522 ids, within the 250,002-row embedding table). An
encode's cost depends on the token count, not on which ids: benchmarks choose their texts by
their token count under this tokenizer and report it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

E5_LARGE: dict[str, Any] = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
}
"""multilingual-e5-large's encoder (its ``config.json``), less the weights."""
MAX_SEQ_LENGTH = 512
PROMPTS = {"query": "query: ", "passage": "passage: "}


def build_shaped_model(out: str | Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a sentence-transformers model of e5-large's shape (``overrides`` change the config,
    for a small one in tests) to ``out``; returns ``out``. Deterministic for a seed."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    try:  # sentence-transformers 6 moved the modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # pragma: no cover - sentence-transformers 3 to 5
        from sentence_transformers import models  # type: ignore[attr-defined,no-redef]

    from .local import bundled_model_path

    out = Path(out)
    staging = out.with_name(out.name + ".transformer")
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    config = XLMRobertaConfig(**{**E5_LARGE, **overrides}, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        transformer = models.Transformer(str(staging), max_seq_length=MAX_SEQ_LENGTH)
        dim = (
            getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
        )()
        model = SentenceTransformer(
            modules=[transformer, models.Pooling(dim, pooling_mode="mean"), models.Normalize()],
            prompts=PROMPTS,
            device="cpu",
        )
        model.save(str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
