"""The front door's API keys and its serve policy: parsing, constant-time identification, and
the refusal of a public address without keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedq.api.auth import ApiKeys
from embedq.api.serve import auth_refusal, is_loopback
from embedq.api.settings import ApiSettings

KEY_A = "0123456789abcdef-a"
KEY_B = "0123456789abcdef-b"


def test_keys_from_the_variable_and_a_file_are_identified_by_name(tmp_path: Path) -> None:
    secret = tmp_path / "keys"
    secret.write_text(f"# the batch jobs' key\nbatch:{KEY_B}\n\n")
    keys = ApiKeys.load(f"chatbot:{KEY_A}", str(secret))
    assert [name for name, _ in keys.entries] == ["chatbot", "batch"]
    assert keys.identify(KEY_A) == "chatbot" and keys.identify(KEY_B) == "batch"
    assert keys.identify(KEY_A[:-1]) is None and keys.identify("") is None
    assert KEY_A.encode() not in repr(keys).encode()  # only digests are kept
    assert not ApiKeys.load("", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chatbot", "each key is 'name:key'"),
        ("chat bot:0123456789abcdef", "each key is 'name:key'"),
        ("chatbot:short", "under 16 characters"),
        (f"a:{KEY_A},a:{KEY_B}", "given twice"),
    ],
)
def test_a_malformed_weak_or_repeated_key_is_refused_without_echoing_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        ApiKeys.load(text)
    assert "short" not in str(caught.value).split("characters")[-1] and KEY_B not in str(caught.value)


def test_a_missing_keys_file_names_the_variable() -> None:
    with pytest.raises(ValueError, match="EMBED_API_KEYS_FILE /nonexistent"):
        ApiKeys.load("", "/nonexistent")


def test_only_a_loopback_address_may_serve_without_keys() -> None:
    open_settings = ApiSettings()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("api.internal")
    assert auth_refusal(open_settings, "127.0.0.1", no_auth=False) is None
    refusal = auth_refusal(open_settings, "0.0.0.0", no_auth=False)
    assert refusal is not None and "EMBED_API_KEYS" in refusal
    assert auth_refusal(open_settings, "0.0.0.0", no_auth=True) is None  # a gateway authenticates
    keyed = ApiSettings(keys=ApiKeys.load(f"chatbot:{KEY_A}"))
    assert auth_refusal(keyed, "0.0.0.0", no_auth=False) is None


def test_body_limits_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="EMBED_API_MAX_BODY_BYTES"):
        ApiSettings.from_env(max_body_bytes=10, bodies_bytes=5)
