"""Model identity on real Redis and real workers: every vector comes from the model its caller
expects, or the call fails saying which model serves; never a mixed result.

Two models of the same dimension stand in for a same-dimension model upgrade: the bundled
all-MiniLM-L6-v2 (mean pooling) and the same weights with CLS pooling (cosine ~0.6 between them).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedq import EmbeddingClient, EmbeddingError
from embedq.api import ApiSettings, create_app
from embedq.bulk import BulkOptions, run_bulk
from embedq.protocol import Keys
from tests.support.servers import ROOT, RedisServer, WorkerProcess, bundled_model_path, wait_until
from tests.support.vectors import ReferenceModel, cosines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model's weights with CLS pooling: same dimension, other vectors."""
    path = tmp_path_factory.mktemp("models") / "minilm-cls"
    shutil.copytree(bundled_model_path(), path)
    pooling = path / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def references(cls_model: Path) -> dict[str, ReferenceModel]:
    return {"minilm-mean": ReferenceModel(bundled_model_path()), "minilm-cls": ReferenceModel(str(cls_model))}


def start(server: RedisServer, queue: str, name: str, model: str | None = None, **env: str) -> WorkerProcess:
    settings = {"EMBED_SERVED_NAME": name, **({"EMBEDDING_MODEL": model} if model else {}), **env}
    return WorkerProcess(server.url, queue, settings)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.alive:
            w.proc.send_signal(signal.SIGCONT)
            w.terminate()


def test_a_worker_of_another_model_refuses_to_join_a_queue(
    redis_server: RedisServer, cls_model: Path, workers: list[WorkerProcess]
) -> None:
    queue = "models-join:requests"
    workers.append(start(redis_server, queue, "minilm-mean"))
    workers.append(start(redis_server, queue, "minilm-mean"))  # the same model: a replica
    other = WorkerProcess(
        redis_server.url, queue, {"EMBEDDING_MODEL": str(cls_model), "EMBED_SERVED_NAME": "minilm-cls"},
        wait_ready=False,
    )  # fmt: skip
    assert other.proc.wait(120) == 2
    log = other.log()
    assert "is served by 'minilm-mean'" in log and "serves 'minilm-cls'" in log and "EMBED_QUEUE" in log


def test_each_openai_request_is_answered_by_the_model_it_names(
    redis_server: RedisServer,
    cls_model: Path,
    references: dict[str, ReferenceModel],
    workers: list[WorkerProcess],
) -> None:
    workers.append(start(redis_server, "models-a:requests", "minilm-mean"))
    workers.append(start(redis_server, "models-b:requests", "minilm-cls", str(cls_model)))
    settings = ApiSettings(
        redis_url=redis_server.url, queue="models-a:requests", extra_queues=("models-b:requests",)
    )
    texts = ["연남 카페 추천해줘", "강남역 맛집 어디야?"]
    with TestClient(create_app(settings)) as api:
        listed = api.get("/v1/models").json()["data"]
        assert sorted((m["id"], m["embedq_dimensions"]) for m in listed) == [
            ("minilm-cls", 384),
            ("minilm-mean", 384),
        ]
        assert len({m["embedq_fingerprint"] for m in listed}) == 2
        for _ in range(5):  # every time, never the other model
            for name, ref in references.items():
                body = api.post("/v1/embeddings", json={"model": name, "input": texts}).json()
                got = np.array([d["embedding"] for d in body["data"]])
                assert body["model"] == name
                assert cosines(got, ref.encode(texts)).min() >= 0.99999
        started = time.monotonic()
        missing = api.post("/v1/embeddings", json={"model": "bge-m3", "input": texts})
        assert missing.status_code == 404 and time.monotonic() - started < 1.0  # at once, not a timeout
        assert "served: minilm-cls, minilm-mean" in missing.json()["error"]["message"]


def test_a_pinned_client_gets_exactly_its_model_or_an_error_naming_what_serves(
    redis_server: RedisServer, workers: list[WorkerProcess]
) -> None:
    workers.append(start(redis_server, "models-pin:requests", "minilm-mean"))
    right = EmbeddingClient.from_url(
        redis_server.url, queue="models-pin:requests", model="minilm-mean", timeout=20
    )
    assert len(right.embed_query("질문")) == 384
    wrong = EmbeddingClient.from_url(
        redis_server.url, queue="models-pin:requests", model="minilm-cls", timeout=20
    )
    with pytest.raises(
        EmbeddingError, match="asks for model 'minilm-cls', but this worker serves 'minilm-mean'"
    ) as info:
        wrong.embed_query("질문")
    assert info.value.code == "model_mismatch"


def test_two_models_on_one_queue_never_give_a_call_a_mixed_matrix(
    redis_server: RedisServer, cls_model: Path, workers: list[WorkerProcess]
) -> None:
    """Force what the start check prevents (the first model's heartbeat expires while it is
    stopped, the second joins, the first resumes): calls then fail, they never mix."""
    queue = "models-mixed:requests"
    mean = start(redis_server, queue, "minilm-mean", EMBED_WORKER_ID="mean")
    workers.append(mean)
    mean.proc.send_signal(signal.SIGSTOP)
    admin = redis_server.client()
    wait_until(
        lambda: not admin.exists(Keys(queue).heartbeat("mean")),
        10,
        "the stopped worker's heartbeat to expire",
    )
    cls = start(redis_server, queue, "minilm-cls", str(cls_model), EMBED_WORKER_ID="cls")
    workers.append(cls)
    mean.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: admin.exists(Keys(queue).heartbeat("mean")), 10, "both workers live")
    client = EmbeddingClient.from_url(redis_server.url, queue=queue, timeout=20)
    outcomes = {"ok": 0, "model_mismatch": 0}
    for n in range(10):
        call = client.call([f"문서 {n}-{i}" for i in range(40)], "passage")
        try:
            vectors = client.embed_call(call)
        except EmbeddingError as exc:
            assert exc.code == "model_mismatch", exc
            outcomes["model_mismatch"] += 1
            continue
        assert len({r.fingerprint for r in call.replies if r is not None}) == 1 and len(vectors) == 40
        outcomes["ok"] += 1
    assert outcomes["model_mismatch"] > 0  # both served: some calls met both, and were refused whole
    status = subprocess.run(
        [sys.executable, "-m", "embedq.cli", "status", "--redis-url", redis_server.url, "--queue", queue],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert "serve 2 different models" in status.stdout and "model 'minilm-cls'" in status.stdout, (
        status.stdout
    )


def test_a_model_change_under_traffic_never_mixes_a_call(
    tmp_path: Path, redis_server: RedisServer, cls_model: Path, references: dict[str, ReferenceModel],
    workers: list[WorkerProcess],
) -> None:  # fmt: skip
    """The documented procedure: the new model on a queue of its own, the store re-embedded
    through it by a pinned bulk job while the old model answers questions, then one switch."""
    old_queue, new_queue = "models-old:requests", "models-new:requests"
    workers.append(start(redis_server, old_queue, "minilm-mean"))
    questions: list[tuple[str, str]] = []  # (queue, fingerprint of each answered question)
    errors: list[str] = []
    queue_now = [old_queue]
    stop = threading.Event()

    def chatbot() -> None:
        clients: dict[str, EmbeddingClient] = {}
        n = 0
        while not stop.is_set():
            queue = queue_now[0]
            client = clients.setdefault(
                queue, EmbeddingClient.from_url(redis_server.url, queue=queue, pin=True)
            )
            call = client.call([f"질문 {n}"])
            try:
                client.embed_call(call)
                questions.append((queue, call.fingerprint or ""))
            except EmbeddingError as exc:
                errors.append(str(exc))
            n += 1
            stop.wait(0.05)

    thread = threading.Thread(target=chatbot)
    thread.start()
    try:
        wait_until(lambda: len(questions) >= 5, 30, "questions on the old model")
        workers.append(start(redis_server, new_queue, "minilm-cls", str(cls_model)))
        docs = [f"문서 {i} 내용" for i in range(60)]
        source = tmp_path / "docs.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(docs)))
        summary = run_bulk(
            source, tmp_path / "out", BulkOptions(queue=new_queue, model="minilm-cls"), redis_server.client()
        )
        assert summary["rows"] == 60
        vectors = np.load(tmp_path / "out" / "vectors.npy")
        assert cosines(vectors, references["minilm-cls"].encode(docs)).min() >= 0.99999  # all the new model's
        before = len(questions)
        queue_now[0] = new_queue  # the switch: one setting
        wait_until(lambda: len(questions) >= before + 5, 30, "questions on the new model")
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    by_queue = {q: {f for qq, f in questions if qq == q} for q in (old_queue, new_queue)}
    assert len(by_queue[old_queue]) == 1 and len(by_queue[new_queue]) == 1  # one model each, throughout
    assert by_queue[old_queue] != by_queue[new_queue]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (
        manifest["fingerprint"] == next(iter(by_queue[new_queue])) and manifest["served_name"] == "minilm-cls"
    )
