"""Integration fixtures: real workers (python -m embedq.worker) and the real bundled model in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import export_model
from tests.support.servers import RedisServer, WorkerProcess, bundled_model_path
from tests.support.vectors import E5_PREFIXES, ReferenceModel


@pytest.fixture(scope="session")
def in_process() -> ReferenceModel:
    """The bundled model called directly: what the queue path must reproduce."""
    return ReferenceModel(bundled_model_path(), threads=2)


@pytest.fixture(scope="session")
def e5_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    """A worker set up as for multilingual-e5-large: 'query: ' / 'passage: ' prefixes."""
    worker = WorkerProcess(
        redis_server.url,
        "it-e5:requests",
        {"EMBED_QUERY_PREFIX": E5_PREFIXES["query"], "EMBED_PASSAGE_PREFIX": E5_PREFIXES["passage"]},
    )
    yield worker
    assert worker.alive, worker.log()
    assert worker.terminate() == 0, worker.log()


@pytest.fixture(scope="session")
def default_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    """A worker with every setting at its default (the bundled model has no prompts)."""
    worker = WorkerProcess(redis_server.url, "it-default:requests")
    yield worker
    assert worker.alive, worker.log()
    assert worker.terminate() == 0, worker.log()


@pytest.fixture(scope="session")
def faulty_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    """The real model behind an encoder that raises on POISON texts."""
    worker = WorkerProcess(
        redis_server.url,
        "it-faulty:requests",
        {"EMBED_ENCODER": "tests.support.faulty_encoder:build", "EMBED_BATCH_WAIT_MS": "20"},
    )
    yield worker
    assert worker.alive, worker.log()
    assert worker.terminate() == 0, worker.log()


@pytest.fixture(autouse=True)
def no_reply_key_without_expiry(redis_server: RedisServer) -> Iterator[None]:
    """After every integration test: each reply key in Redis has an expiry."""
    yield
    r = redis_server.client()
    lasting = [k for k in r.scan_iter(match="*:reply:*", count=1000) if r.ttl(k) == -1]
    r.close()
    assert lasting == [], f"reply keys without expiry: {lasting[:5]}"


@pytest.fixture
def redis_server_restartable() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and start again."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model, exported for the onnx and openvino backends."""
    return export_model(tmp_path_factory.mktemp("export") / "minilm")
