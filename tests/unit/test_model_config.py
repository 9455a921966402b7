"""Reading a sentence-transformers model's configuration from its files, in the format of
sentence-transformers 6 and of the versions before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from embedq.worker.model_config import ModelConfigError, read_model_config

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
    {
        "idx": 1,
        "name": "1",
        "path": "1_Pooling",
        "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    },
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.base.modules.normalize.Normalize",
    },
]


def model(
    root: Path,
    pooling: dict[str, Any],
    bert: dict[str, Any] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    """A model directory with these configs (only what ``read_model_config`` reads)."""
    (root / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(json.dumps(MODULES))
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (root / "sentence_bert_config.json").write_text(json.dumps(bert or {}))
    if tokenizer is not None:
        (root / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return root


def test_both_formats_of_the_same_model_read_alike(tmp_path: Path) -> None:
    legacy = read_model_config(
        model(
            tmp_path / "st5",
            {
                "word_embedding_dimension": 1024,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_cls_token": False,
            },
            bert={"max_seq_length": 512, "do_lower_case": False},
        )
    )
    st6 = read_model_config(
        model(
            tmp_path / "st6",
            {"embedding_dimension": 1024, "pooling_mode": "mean", "include_prompt": True},
            bert={"transformer_task": "feature-extraction"},
            tokenizer={"model_max_length": 512},
        )
    )
    assert legacy == st6
    assert (st6.pooling, st6.dim, st6.max_seq_length, st6.normalize) == ("mean", 1024, 512, True)


@pytest.mark.parametrize(
    ("pooling", "mode"),
    [
        ({"embedding_dimension": 8, "pooling_mode": ["cls"]}, "cls"),
        ({"embedding_dimension": 8, "pooling_mode": "mean_sqrt_len_tokens"}, "mean_sqrt_len"),
        ({"word_embedding_dimension": 8, "pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
        ({"word_embedding_dimension": 8, "pooling_mode_max_tokens": True}, "max"),
    ],
)
def test_each_pooling_mode_is_read_by_its_name_in_either_format(
    tmp_path: Path, pooling: dict[str, Any], mode: str
) -> None:
    assert read_model_config(model(tmp_path, pooling)).pooling == mode


@pytest.mark.parametrize(
    "pooling",
    [
        {"embedding_dimension": 8, "pooling_mode": ["mean", "max"]},
        {"embedding_dimension": 8, "pooling_mode": "lasttoken"},
        {"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
        {"word_embedding_dimension": 8, "pooling_mode_weightedmean_tokens": True},
    ],
)
def test_pooling_the_torch_free_encoder_lacks_is_refused(tmp_path: Path, pooling: dict[str, Any]) -> None:
    with pytest.raises(ModelConfigError, match="exactly one of"):
        read_model_config(model(tmp_path, pooling))


def test_a_tokenizer_without_a_limit_leaves_the_window_open(tmp_path: Path) -> None:
    no_limit = {"model_max_length": 1000000000000000019884624838656}
    config = read_model_config(
        model(tmp_path, {"embedding_dimension": 8, "pooling_mode": "mean"}, tokenizer=no_limit)
    )
    assert config.max_seq_length is None
