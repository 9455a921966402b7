"""The example chatbot-side API (examples/api/app.py) against a real Redis and worker."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.fake_encoder import fake_vector
from tests.support.servers import ROOT, RedisServer, WorkerProcess


def load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embedq_example_api", ROOT / "examples" / "api" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def api_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        redis_server.url,
        "it-api:requests",
        {
            "EMBED_ENCODER": "tests.support.fake_encoder:build",
            "EMBED_TEST_DIM": "16",
            "EMBED_MAX_TEXT_CHARS": "50",
        },
    )
    yield worker
    assert worker.terminate() == 0, worker.log()


@pytest.fixture
def api(
    redis_server: RedisServer, api_worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("EMBED_QUEUE", api_worker.queue)
    monkeypatch.setenv("EMBED_TIMEOUT", "5")
    with TestClient(load_app().app) as client:
        yield client


def test_embeds_through_the_worker_in_input_order(api: TestClient) -> None:
    texts = [f"질문 {i}" for i in range(11)]  # more than one worker request
    response = api.post("/embed", json={"texts": texts, "kind": "passage"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dim"] == 16
    expected = np.stack([fake_vector("passage", t, 16) for t in texts])
    np.testing.assert_allclose(np.array(body["vectors"]), expected, rtol=1e-6)
    assert api.get("/healthz").json() == {"ok": True, "workers": 1}


def test_errors_map_to_statuses_a_caller_can_act_on(api: TestClient) -> None:
    refused = api.post("/embed", json={"texts": ["x" * 51]})
    assert refused.status_code == 422
    assert refused.json()["detail"]["code"] == "text_too_long"
    assert api.post("/embed", json={"texts": []}).status_code == 422  # validated by the API itself
    assert api.post("/embed", json={"texts": ["a"], "kind": "document"}).status_code == 422


def test_no_redis_is_a_503_not_a_crash(
    redis_server_restartable: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server_restartable.url)
    monkeypatch.setenv("EMBED_TIMEOUT", "1")
    with TestClient(load_app().app) as client:
        redis_server_restartable.kill()
        response = client.post("/embed", json={"texts": ["hello"]})
        assert response.status_code == 503
        assert "cannot talk to Redis" in response.json()["detail"]
        assert client.get("/healthz").status_code == 503


def test_bodies_and_texts_over_the_limits_are_refused_before_they_travel(api: TestClient) -> None:
    module = sys.modules["embedq_example_api"]
    huge = {"texts": ["x" * 1000] * 8, "pad": "y" * module.MAX_BODY_BYTES}
    response = api.post("/embed", json=huge)
    assert response.status_code == 413 and "request body over" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while being read
        yield b'{"texts": ["'
        for _ in range(module.MAX_BODY_BYTES // 65536 + 2):
            yield b"z" * 65536
        yield b'"]}'

    streamed = api.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    too_long = api.post("/embed", json={"texts": ["ok", "x" * (module.MAX_TEXT_CHARS + 1)]})
    assert too_long.status_code == 422 and too_long.json()["detail"]["code"] == "text_too_long"
    surrogate = api.post(
        "/embed", content=b'{"texts": ["\\ud800 lone"]}', headers={"content-type": "application/json"}
    )
    assert surrogate.status_code == 422 and surrogate.json()["detail"]["code"] == "invalid_input"


def test_healthz_is_503_without_a_live_worker(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("EMBED_QUEUE", "it-api-nobody:requests")
    with TestClient(load_app().app) as client:
        response = client.get("/healthz")
        assert response.status_code == 503 and "no live worker" in response.json()["error"]
