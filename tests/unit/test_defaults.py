"""The light side's defaults and environment (producer/defaults.py), and the worker's settings
taking the values they share from there."""

from __future__ import annotations

import pytest

from embedq import defaults
from embedq.defaults import ENV, parse_bool, setting
from embedq.worker.settings import Settings, SettingsError


def test_a_setting_is_its_variable_else_its_default() -> None:
    assert setting("queue", {}) == defaults.QUEUE
    assert setting("queue", {"EMBED_QUEUE": "other:requests"}) == "other:requests"
    assert setting("timeout", {"EMBED_TIMEOUT": "2.5"}) == 2.5
    assert setting("api_port", {"EMBED_API_PORT": ""}) == defaults.API_PORT  # empty counts as unset
    assert setting("cache_url", {}) is None


def test_a_value_that_does_not_parse_names_its_variable() -> None:
    with pytest.raises(ValueError, match="EMBED_API_PORT='eighty' is not valid"):
        setting("api_port", {"EMBED_API_PORT": "eighty"})


def test_every_light_side_variable_is_declared_once() -> None:
    variables = [s.var for s in ENV.values()]
    assert len(variables) == len(set(variables))


def test_the_worker_shares_the_light_sides_defaults() -> None:
    s = Settings(worker_id="w")
    assert (s.redis_url, s.queue, s.max_batch, s.max_text_chars) == (
        defaults.REDIS_URL,
        defaults.QUEUE,
        defaults.MAX_BATCH,
        defaults.MAX_TEXT_CHARS,
    )


def test_worker_settings_parse_by_their_real_types() -> None:
    s = Settings.from_env(
        {
            "EMBED_TRUNCATE": "off",
            "EMBED_BATCH_WAIT_MS": "12.5",
            "EMBED_THREADS": "4",
            "EMBED_QUERY_PREFIX": "",
            "EMBED_WORKER_ID": "w",
        }
    )
    assert (s.truncate, s.batch_wait_ms, s.threads, s.query_prefix) == (False, 12.5, 4, "")
    with pytest.raises(SettingsError, match="EMBED_THREADS='two' is not a valid threads"):
        Settings.from_env({"EMBED_THREADS": "two"})


def test_the_log_level_is_checked() -> None:
    assert Settings(worker_id="w", log_level="debug").log_level == "debug"
    with pytest.raises(SettingsError, match=r"log_level .*EMBED_LOG_LEVEL"):
        Settings(worker_id="w", log_level="LOUD")


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("Yes", True), ("off", False), ("FALSE", False)])
def test_booleans_read_the_usual_words(raw: str, value: bool) -> None:
    assert parse_bool(raw) is value
