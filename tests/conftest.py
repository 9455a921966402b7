"""Session fixtures: a real redis-server for the integration tests, started on a free port."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.servers import RedisServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs redis-server and the model: mark it so."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The failed tests' names last, one short line each: a CI log's tail names them even when
    an assertion's message is long enough to push pytest's own summary out of view."""
    failed = [
        r.nodeid for r in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    ]
    if failed:
        terminalreporter.write_line("failed tests: " + " ".join(dict.fromkeys(failed)))
