"""Integration fixtures: real workers (python -m embedq.worker) and the real bundled model in-process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedq import EmbeddingClient
from tests.support.servers import ROOT, RedisServer, WorkerProcess, bundled_model_path

E5_PREFIXES = {"query": "query: ", "passage": "passage: "}

# The design record's test texts (e5-cpu-optimization-notes.ko.md, section 5.1).
RECORD_QUERIES = [
    "연남 카페 추천해줘",
    "강남역 맛집 어디야?",
    "비건 베이커리 있나요?",
    "여의도 회식 장소 추천",
    "파스타 맛있는 데 알려줘",
]
RECORD_LONG_TEXT = (
    "이 매장은 브런치와 스페셜티 커피를 함께 제공하며, 평일 오후에 방문객이 많고 "
    "주차 공간이 협소합니다. 시그니처 메뉴로는 수제 치아바타 샌드위치와 싱글 오리진 핸드드립이 있습니다. "
    "주말에는 예약을 권장하며, 반려동물 동반이 가능합니다."
)


class InProcess:
    """The same model called directly: what the queue path must reproduce."""

    def __init__(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(2)
        self.model = SentenceTransformer(bundled_model_path(), device="cpu")

    def encode(self, texts: list[str], prefix: str = "") -> np.ndarray:
        return self.model.encode([prefix + t for t in texts], normalize_embeddings=True, prompt="")


@pytest.fixture(scope="session")
def in_process() -> InProcess:
    return InProcess()


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


def client_for(server: RedisServer, worker: WorkerProcess, **options: object) -> EmbeddingClient:
    return EmbeddingClient.from_url(server.url, queue=worker.queue, timeout=20.0, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_reply_key_without_expiry(redis_server: RedisServer) -> Iterator[None]:
    """After every integration test: each reply key in Redis has an expiry."""
    yield
    r = redis_server.client()
    lasting = [k for k in r.scan_iter(match="*:reply:*", count=1000) if r.ttl(k) == -1]
    r.close()
    assert lasting == [], f"reply keys without expiry: {lasting[:5]}"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def redis_server_restartable() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and start again."""
    server = RedisServer()
    yield server
    server.stop()


def export_model(out: Path, *args: str) -> Path:
    """``embedq-worker export`` of the bundled model into ``out`` (checked by the export itself)."""
    result = subprocess.run(
        [sys.executable, "-m", "embedq.worker", "export", bundled_model_path(), "--out", str(out), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "min cosine vs torch" in result.stdout
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model, exported for the onnx and openvino backends."""
    return export_model(tmp_path_factory.mktemp("export") / "minilm")
