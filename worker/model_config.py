"""A sentence-transformers model's own configuration, read from its directory without importing
sentence-transformers or torch: the modules, how it pools, whether it normalizes, its token
window and its prompts. The torch-free encoder computes exactly these steps and refuses a model
whose modules it does not implement, rather than computing something else."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRANSFORMER = "Transformer"
POOLING = "Pooling"
NORMALIZE = "Normalize"
SUPPORTED_MODULES = (TRANSFORMER, POOLING, NORMALIZE)
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
LEGACY_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
"""Pooling flags of configs saved before sentence-transformers 6, by the mode they turn on."""
LEGACY_MODE_NAMES = {"mean_sqrt_len_tokens": "mean_sqrt_len"}
"""sentence-transformers 6's mode names where they differ from ours."""
UNBOUNDED = 1_000_000
"""A tokenizer ``model_max_length`` at or past this is transformers' "no limit" placeholder."""


class ModelConfigError(ValueError):
    """The model's configuration is missing, unreadable, or asks for something not implemented."""


@dataclass(frozen=True)
class ModelConfig:
    """What the encoder needs to reproduce ``SentenceTransformer.encode`` after the transformer."""

    pooling: str
    normalize: bool
    max_seq_length: int | None
    lowercase: bool
    dim: int
    prompts: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The config as stored in an export's manifest."""
        return {
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
            "lowercase": self.lowercase,
            "dim": self.dim,
            "prompts": dict(self.prompts),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelConfig:
        """The config from an export's manifest."""
        return cls(
            pooling=str(obj["pooling"]),
            normalize=bool(obj["normalize"]),
            max_seq_length=None if obj.get("max_seq_length") is None else int(obj["max_seq_length"]),
            lowercase=bool(obj.get("lowercase", False)),
            dim=int(obj["dim"]),
            prompts={str(k): str(v) for k, v in (obj.get("prompts") or {}).items()},
        )


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from None


def _pooling_modes(pooling: dict[str, Any]) -> list[str]:
    """The pooling modes a Pooling config turns on, in either format: sentence-transformers 6's
    ``pooling_mode`` (a name or a list) or the earlier ``pooling_mode_*`` flags."""
    if "pooling_mode" in pooling:
        named = pooling["pooling_mode"]
        names = [named] if isinstance(named, str) else list(named or [])
        return [LEGACY_MODE_NAMES.get(str(n), str(n)) for n in names]
    return [
        LEGACY_POOLING_FLAGS.get(k, k.removeprefix("pooling_mode_"))
        for k, v in pooling.items()
        if k.startswith("pooling_mode_") and v
    ]


def read_model_config(directory: str | Path) -> ModelConfig:
    """The config of the sentence-transformers model saved in ``directory``."""
    root = Path(directory)
    modules = _read(root / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise ModelConfigError(f"{root} has no sentence-transformers modules.json")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in SUPPORTED_MODULES]
    if unsupported or kinds[:2] != [TRANSFORMER, POOLING]:
        raise ModelConfigError(
            f"{root}: modules {kinds}; the torch-free encoder implements Transformer, Pooling and an "
            "optional Normalize, in that order. Serve this model with EMBED_BACKEND=torch"
        )
    pooling_dir = root / str(modules[1].get("path") or "1_Pooling")
    pooling = _read(pooling_dir / "config.json") or {}
    modes = _pooling_modes(pooling)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelConfigError(
            f"{pooling_dir}: pooling {pooling}; the torch-free encoder implements exactly one of "
            f"{', '.join(POOLING_MODES)}. Serve this model with EMBED_BACKEND=torch"
        )
    if pooling.get("include_prompt") is False:
        raise ModelConfigError(
            f"{pooling_dir}: this model pools without its prompt tokens (include_prompt false), which the "
            "torch-free encoder does not implement. Serve it with EMBED_BACKEND=torch"
        )
    bert = _read(root / "sentence_bert_config.json") or {}
    st = _read(root / "config_sentence_transformers.json") or {}
    dim = pooling.get("embedding_dimension", pooling.get("word_embedding_dimension"))
    if not isinstance(dim, int):
        raise ModelConfigError(f"{pooling_dir}/config.json names no embedding_dimension")
    window = bert.get("max_seq_length")
    if window is None:  # sentence-transformers 6 leaves the window to the tokenizer's config
        window = (_read(root / "tokenizer_config.json") or {}).get("model_max_length")
        window = window if isinstance(window, int) and window < UNBOUNDED else None
    return ModelConfig(
        pooling=modes[0],
        normalize=NORMALIZE in kinds,
        max_seq_length=window,
        lowercase=bool(bert.get("do_lower_case", False)),
        dim=dim,
        prompts={str(k): str(v) for k, v in (st.get("prompts") or {}).items()},
    )
