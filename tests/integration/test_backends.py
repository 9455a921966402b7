"""The torch-free backends: the bundled model exported with ``embedq-worker export`` and served by
workers on ONNX Runtime and OpenVINO, without torch, with the torch model's vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from embedq import EmbeddingClient
from embedq.worker.model_config import ModelConfigError, read_model_config
from tests.support.servers import ROOT, RedisServer, WorkerProcess, bundled_model_path
from tests.support.vectors import RECORD_LONG_TEXT, RECORD_QUERIES, ReferenceModel, cosines

pytestmark = pytest.mark.slow

NO_TORCH = """
import sys
for name in ("torch", "sentence_transformers", "transformers"):
    sys.modules[name] = None  # any import of these now fails
"""


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PYTHONPATH entry whose sitecustomize makes torch unimportable."""
    path = tmp_path_factory.mktemp("no-torch")
    (path / "sitecustomize.py").write_text(NO_TORCH)
    return path


def test_the_export_checks_itself_and_records_the_figure(exported: Path) -> None:
    manifest = json.loads((exported / "embedq_export.json").read_text())
    assert manifest["fidelity"]["min_cosine"] >= 0.99999
    assert manifest["fidelity"]["probes"] >= 8
    config = manifest["config"]
    assert (config["pooling"], config["normalize"], config["max_seq_length"]) == ("mean", True, 256)
    assert (config["lowercase"], config["dim"], config["prompts"]) == (False, 384, {})
    assert (exported / "model.onnx").is_file() and (exported / "tokenizer.json").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "embedq.worker", "export", bundled_model_path(), "--out", str(exported)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert again.returncode == 1 and "already holds an export" in again.stderr


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_worker_without_torch_serves_the_models_own_vectors(
    redis_server: RedisServer, exported: Path, no_torch: Path, in_process: ReferenceModel, backend: str
) -> None:
    worker = WorkerProcess(
        redis_server.url,
        f"it-{backend}:requests",
        {"EMBEDDING_MODEL": str(exported), "EMBED_BACKEND": backend, "PYTHONPATH": str(no_torch)},
    )
    try:
        assert f"backend={backend}" in worker.log()
        client = EmbeddingClient.from_url(redis_server.url, queue=worker.queue, timeout=30)
        texts = [*RECORD_QUERIES, RECORD_LONG_TEXT]
        assert cosines(client.embed(texts, "query"), in_process.encode(texts)).min() >= 0.99999
        assert cosines(client.embed(texts, "passage"), in_process.encode(texts)).min() >= 0.99999
        long_text = "토큰 창보다 긴 문서입니다. " * 300
        call = client.call([long_text])
        client.send(call)
        vectors = client.wait(call)
        assert call.truncated == [0]  # cut as the model cuts, and said so
        assert cosines(vectors, in_process.encode([long_text])).min() >= 0.99999
        assert "Traceback" not in worker.log()
    finally:
        assert worker.terminate() == 0, worker.log()


def test_onnx_on_a_directory_without_an_export_is_a_clear_error_at_start(redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError) as info:
        WorkerProcess(
            redis_server.url,
            "it-not-exported:requests",
            {"EMBEDDING_MODEL": bundled_model_path(), "EMBED_BACKEND": "onnx"},
            start_timeout=60,
        )
    assert "embedq-worker export" in str(info.value)
    bad = subprocess.run(
        [sys.executable, "-m", "embedq.worker", "--backend", "tensorrt", "--redis-url", redis_server.url],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "backend" in bad.stderr


def test_module_types_the_torch_free_path_lacks_are_refused(tmp_path: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True})
    )
    with pytest.raises(ModelConfigError, match=r"Dense.*EMBED_BACKEND=torch"):
        read_model_config(tmp_path)
    modules.pop()
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, "pooling_mode_lasttoken": True})
    )
    with pytest.raises(ModelConfigError, match="exactly one of"):
        read_model_config(tmp_path)


def test_the_export_manifest_is_what_the_bundled_model_says(exported: Path) -> None:
    config = read_model_config(bundled_model_path())
    manifest = json.loads((exported / "embedq_export.json").read_text())
    assert config.as_json() == manifest["config"]
