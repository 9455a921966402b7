"""The torch-free backends: the bundled model exported with ``embedq-worker export`` and served by
workers on ONNX Runtime and OpenVINO, without torch, with the torch model's vectors."""

from __future__ import annotations

import json
import shutil
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
    assert manifest["fidelity"]["probes"] >= 200 and manifest["fidelity"]["token_ids_differ"] == 0
    recorded = json.loads((exported / "probes.json").read_text())
    assert len(recorded["inputs"]) == len(recorded["token_ids"]) == manifest["fidelity"]["probes"]
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


FULL_WIDTH_COLON = "시간\uff1a 10시 (full-width colon)"


@pytest.fixture(scope="module")
def disagreeing_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with a tokenizer.json whose normalizer maps a full-width colon to ':',
    which transformers does not follow when it builds the tokenizer (it keeps its own
    BertNormalizer): the file and the torch path disagree on that character."""
    path = tmp_path_factory.mktemp("disagree") / "minilm-edited-tokenizer"
    shutil.copytree(bundled_model_path(), path)
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Replace", "pattern": {"String": "\uff1a"}, "content": ":"},
            spec["normalizer"],
        ],
    }
    (path / "tokenizer.json").write_text(json.dumps(spec))
    return path


def test_an_export_runs_the_tokenizer_the_torch_path_runs_not_the_file(
    disagreeing_model: Path, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    torch_ids = AutoTokenizer.from_pretrained(str(disagreeing_model))(FULL_WIDTH_COLON)["input_ids"]
    file_ids = Tokenizer.from_file(str(disagreeing_model / "tokenizer.json")).encode(FULL_WIDTH_COLON).ids
    assert torch_ids != file_ids[: len(torch_ids)]  # the premise: they disagree
    command = ["export", str(disagreeing_model), "--out", str(tmp_path / "edited")]
    result = subprocess.run(
        [sys.executable, "-m", "embedq.worker", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "edited" / "embedq_export.json").read_text())
    assert manifest["fidelity"]["token_ids_differ"] == 0 and manifest["fidelity"]["min_cosine"] >= 0.99999
    exported = Tokenizer.from_file(str(tmp_path / "edited" / "tokenizer.json"))
    exported.no_padding()
    assert exported.encode(FULL_WIDTH_COLON).ids == torch_ids


def test_a_worker_refuses_an_export_whose_tokenizer_no_longer_gives_the_recorded_ids(
    redis_server: RedisServer, disagreeing_model: Path, exported: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered)
    shutil.copy(
        disagreeing_model / "tokenizer.json", tampered / "tokenizer.json"
    )  # what copying the file did
    worker = WorkerProcess(
        redis_server.url,
        "it-tampered:requests",
        {"EMBEDDING_MODEL": str(tampered), "EMBED_BACKEND": "onnx"},
        wait_ready=False,
    )
    assert worker.proc.wait(120) == 2
    assert "other token ids than the model's own" in worker.log() and "Export the model again" in worker.log()


def test_bf16_is_served_only_past_its_fidelity_gate_under_its_own_fingerprint(exported: Path) -> None:
    """EMBED_PRECISION=bf16 (OpenVINO): on a CPU without bf16 inference OpenVINO runs f32, and the
    worker says so and keeps the exact fingerprint; where bf16 runs, its vectors on the export's
    probes must reach the gate against f32, and they get a fingerprint of their own."""
    import numpy as np

    from embedq.worker.onnx_encoder import ExportError, OnnxEncoder

    exact = OnnxEncoder(exported, runtime="openvino")
    bf16 = OnnxEncoder(exported, runtime="openvino", precision="bf16")
    if bf16.precision == "f32":  # this CPU: no AVX512-BF16 / AMX
        assert bf16.fingerprint == exact.fingerprint and bf16.backend == "openvino" and bf16.fidelity is None
    else:
        assert bf16.fingerprint != exact.fingerprint and bf16.backend == "openvino-bf16"
        assert bf16.fidelity is not None and bf16.fidelity >= 0.9999
    with pytest.raises(ExportError, match="bf16 with EMBED_BACKEND=openvino"):
        OnnxEncoder(exported, runtime="onnx", precision="bf16")

    # the gate itself, on vectors made to drift the way a too-coarse precision would
    run = exact._run
    rng = np.random.default_rng(0)
    exact._run = lambda batch: run(batch) + rng.normal(0, 0.05, size=run(batch).shape).astype(np.float32)
    with pytest.raises(ExportError, match=r"bf16 fidelity on 2[0-9]{2} probes: min cosine"):
        exact._gate_bf16(exported / "probes.json", 0.9999)
    exact._run = run
    exact._gate_bf16(exported / "probes.json", 0.9999)  # f32 against itself: cosine 1
    assert exact.fidelity is not None and exact.fidelity > 0.99999


def test_tokens_counted_at_take_are_the_ones_encoded(exported: Path) -> None:
    """The worker counts a request's tokens when it takes it; the encode reuses those within the
    window instead of tokenizing again: the model's inputs must not change by it, at or over the
    window, nor when a text was counted and never encoded."""
    import numpy as np

    from embedq.worker import onnx_encoder
    from embedq.worker.onnx_encoder import OnnxEncoder

    encoder = OnnxEncoder(exported)
    tokens = encoder.tokens
    texts = [*RECORD_QUERIES[:3], RECORD_LONG_TEXT * 40, "  Mixed 한국어 text\uff1afull-width  "]
    kinds = ["query", "query", "passage", "passage", "query"]
    inputs = encoder._inputs(texts, kinds)
    fresh = tokens.batch(inputs)  # nothing counted: every text tokenized here
    counts = encoder.token_counts(texts, kinds)
    assert counts[3] > 256 and len(tokens._memo) == len(texts) - 1  # the one over the window is not kept
    reused = tokens.batch(inputs)
    assert tokens._memo == {}
    assert fresh.keys() == reused.keys()
    for name in fresh:
        np.testing.assert_array_equal(fresh[name], reused[name])
    assert np.array_equal(encoder.encode(texts, kinds), encoder.encode(texts, kinds))
    for i in range(onnx_encoder.MEMO_MAX // 2 + 1):  # counted and never encoded (a refused request)
        encoder.token_counts([f"{i}", f"{i}!"], ["query", "query"])
    assert len(tokens._memo) <= onnx_encoder.MEMO_MAX
