"""What a worker does about each Redis error (worker/redis_errors.py): name it, advise, back off."""

from __future__ import annotations

import logging

import pytest
import redis

from embedq.worker.redis_errors import BACKOFF_MAX_S, BACKOFF_START_S, RedisGuard, classify


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (redis.exceptions.ConnectionError("refused"), "connection"),
        (redis.exceptions.TimeoutError("timed out"), "connection"),
        (redis.exceptions.OutOfMemoryError("OOM command not allowed"), "OOM"),
        (redis.exceptions.NoPermissionError("NOPERM this user has no permissions"), "NOPERM"),
        (redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."), "READONLY"),
        (redis.exceptions.BusyLoadingError("LOADING Redis is loading"), "LOADING"),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), "WRONGTYPE"),
        (redis.exceptions.ResponseError("MISCONF Redis is configured to save"), "MISCONF"),
        (redis.exceptions.ResponseError("ERR something new"), "ERR"),
        (redis.exceptions.MovedError("3999 127.0.0.1:6381"), "CLUSTER"),
        (redis.exceptions.ClusterCrossSlotError("Keys in request don't hash to the same slot"), "CLUSTER"),
        (ValueError("not Redis"), "ValueError"),
    ],
)
def test_every_error_gets_a_short_name(exc: BaseException, code: str) -> None:
    assert classify(exc) == code


def test_an_episode_is_logged_once_with_advice_and_its_backoff_grows_then_resets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codes: list[str] = []
    guard = RedisGuard(on_error=codes.append)
    oom = redis.exceptions.OutOfMemoryError("OOM command not allowed")
    with caplog.at_level(logging.WARNING, logger="embedq.worker"):
        delays = [guard.failed(oom, "serving") for _ in range(8)]
    assert delays[0] == BACKOFF_START_S and delays == sorted(delays) and delays[-1] == BACKOFF_MAX_S
    assert caplog.text.count("Redis error while serving") == 1 and codes == ["OOM"] * 8
    report = guard.report()
    assert report is not None and report["code"] == "OOM" and report["count"] == 8
    with caplog.at_level(logging.WARNING, logger="embedq.worker"):
        guard.recovered()
    assert guard.report() is None and "Redis answers again" in caplog.text
    assert guard.failed(oom, "serving") == BACKOFF_START_S  # a new episode starts from the start


def test_a_different_error_is_a_new_episode() -> None:
    guard = RedisGuard()
    guard.failed(redis.exceptions.ConnectionError("refused"), "serving")
    guard.failed(redis.exceptions.ConnectionError("refused"), "serving")
    guard.failed(redis.exceptions.NoPermissionError("NOPERM"), "serving")
    report = guard.report()
    assert report is not None and (report["code"], report["count"]) == ("NOPERM", 1)
    assert guard.total == 3
