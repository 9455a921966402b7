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
    modes = [
        m
        for m in POOLING_MODES
        if pooling.get(f"pooling_mode_{m}_tokens" if m != "cls" else "pooling_mode_cls_token")
    ]
    others = [
        k
        for k, v in pooling.items()
        if k.startswith("pooling_mode_") and v and not any(m in k for m in modes)
    ]
    if len(modes) != 1 or others:
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
    dim = pooling.get("word_embedding_dimension")
    if not isinstance(dim, int):
        raise ModelConfigError(f"{pooling_dir}/config.json names no word_embedding_dimension")
    return ModelConfig(
        pooling=modes[0],
        normalize=NORMALIZE in kinds,
        max_seq_length=bert.get("max_seq_length"),
        lowercase=bool(bert.get("do_lower_case", False)),
        dim=dim,
        prompts={str(k): str(v) for k, v in (st.get("prompts") or {}).items()},
    )
