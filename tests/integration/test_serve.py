"""``embedq serve``: the official openai SDK against the real server process, a real worker and the
real model; every error row in OpenAI's shape."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from embedq.api import ApiSettings, create_app
from embedq.protocol import Keys
from tests.support.servers import ROOT, RedisServer, WorkerProcess, bundled_model_path, free_port, wait_until
from tests.support.vectors import RECORD_QUERIES, ReferenceModel, cosines

pytestmark = pytest.mark.slow


SERVED = "all-MiniLM-L6-v2"
"""The bundled model's served name (a local path needs one: EMBED_SERVED_NAME)."""


@pytest.fixture(scope="module")
def serve_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(
        redis_server.url, "it-serve:requests", {"EMBED_HEARTBEAT_TTL": "1", "EMBED_SERVED_NAME": SERVED}
    )
    yield worker
    if worker.alive:
        assert worker.terminate() == 0, worker.log()


@pytest.fixture(scope="module")
def server_url(redis_server: RedisServer, serve_worker: WorkerProcess) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedq.cli", "serve", "--port", str(port),
         "--redis-url", redis_server.url, "--queue", serve_worker.queue],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), 30, "embedq serve to listen")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_openai_sdk_gets_the_models_own_vectors(server_url: str, in_process: ReferenceModel) -> None:
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused")
    model = SERVED
    assert [m.id for m in client.models.list().data] == [model]
    by_path = client.embeddings.create(model=bundled_model_path(), input=["x"])  # the model's path works too
    assert by_path.model == SERVED
    expected = in_process.encode(RECORD_QUERIES)
    by_default = client.embeddings.create(model=model, input=RECORD_QUERIES)  # the SDK asks for base64
    as_float = client.embeddings.create(model=model, input=RECORD_QUERIES, encoding_format="float")
    for name, response in (("base64 (default)", by_default), ("float", as_float)):
        vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert [d.index for d in response.data] == list(range(len(RECORD_QUERIES)))
        lowest = cosines(vectors, expected).min()
        print(f"openai SDK, {name}: min cosine vs in-process {lowest:.8f}")
        assert lowest >= 0.99999
    assert by_default.usage.prompt_tokens == sum(
        len(in_process.model.tokenize([t])["input_ids"][0]) for t in RECORD_QUERIES
    )
    single = client.embeddings.create(
        model=model, input="  leading and trailing spaces  ", encoding_format="float"
    )
    assert (
        cosines(np.array([single.data[0].embedding]), in_process.encode(["  leading and trailing spaces  "]))[
            0
        ]
        >= 0.99999
    )
    raw = httpx.post(
        f"{server_url}/v1/embeddings", json={"model": model, "input": "x", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,)
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_healthz_turns_503_within_the_heartbeat_ttl_after_the_last_worker_stops(
    server_url: str, serve_worker: WorkerProcess
) -> None:
    assert httpx.get(f"{server_url}/healthz").status_code == 200
    serve_worker.proc.kill()  # no clean deregistration: only the heartbeat's expiry tells
    killed = time.monotonic()
    wait_until(lambda: httpx.get(f"{server_url}/healthz").status_code == 503, 5, "healthz to turn 503")
    assert time.monotonic() - killed <= 1.0 + 1.0  # the TTL (1 s) and a poll's worth
    metrics = httpx.get(f"{server_url}/metrics").text
    assert 'embedq_api_requests_total{route="/v1/embeddings",status="200",key=""}' in metrics  # no keys
    for n in range(20):  # unknown paths are counted under one label: /metrics cannot grow without bound
        httpx.get(f"{server_url}/random/{n}", timeout=5)
    metrics = httpx.get(f"{server_url}/metrics", timeout=5).text
    assert "/random/" not in metrics and 'route="unmatched",status="404",key=""' in metrics


@pytest.fixture
def api(redis_server: RedisServer) -> Iterator[TestClient]:
    worker = WorkerProcess(
        redis_server.url, "it-serve-errors:requests",
        {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_DIM": "8"},
    )  # fmt: skip
    settings = ApiSettings(redis_url=redis_server.url, queue=worker.queue, max_inputs=16, max_text_chars=100)
    try:
        with TestClient(create_app(settings)) as client:
            yield client
    finally:
        worker.terminate()


def check(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_every_error_has_openais_shape(api: TestClient, redis_server: RedisServer) -> None:
    ok = api.post("/v1/embeddings", json={"model": "fake-model", "input": ["a", "b"]})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2
    check(api.post("/v1/embeddings", json={"model": "nope", "input": "a"}), 404, "model_not_found")
    check(api.post("/v1/embeddings", json={"model": "fake-model", "input": "a", "dimensions": 4}), 400,
          "unsupported_dimensions")  # fmt: skip
    check(
        api.post("/v1/embeddings", json={"model": "fake-model", "input": ["x" * 101]}), 400, "text_too_long"
    )
    check(
        api.post("/v1/embeddings", json={"model": "fake-model", "input": ["a"] * 17}), 400, "too_many_inputs"
    )
    check(api.post("/v1/embeddings", json={"model": "fake-model", "input": [" "]}), 400, "empty_text")
    check(api.post("/v1/embeddings", json={"model": "fake-model"}), 400, "invalid_request")
    huge = {"model": "fake-model", "input": "a", "pad": "y" * 10_000_000}
    check(api.post("/v1/embeddings", json=huge), 413, "request_too_large")
    native = api.post("/embed", json={"texts": ["a"], "kind": "passage"})
    assert native.status_code == 200 and native.json()["dim"] == 8


def test_a_full_queue_a_timeout_and_no_redis_map_to_429_504_503(redis_server: RedisServer) -> None:
    keys = Keys("it-serve-nobody:requests")
    admin = redis_server.client()
    settings = ApiSettings(redis_url=redis_server.url, queue=keys.queue, timeout=0.5)
    with TestClient(create_app(settings)) as client:
        check(client.post("/embed", json={"texts": ["a"]}), 504, "timeout")
        admin.rpush(keys.queue, *([b"x"] * 10_000))
        full = client.post("/embed", json={"texts": ["a"]})
        check(full, 429, "queue_full")
        assert full.headers["Retry-After"] == "1"
        admin.delete(keys.queue)
    down = RedisServer()
    down.kill()
    with TestClient(create_app(ApiSettings(redis_url=down.url, timeout=0.5))) as client:
        check(client.post("/embed", json={"texts": ["a"]}), 503, "redis_unavailable")
        check(client.get("/v1/models"), 503, "redis_unavailable")
        assert client.get("/healthz").status_code == 503
    down.stop()
