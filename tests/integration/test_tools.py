"""``embedq eval`` and ``embedq bench`` end to end at tiny sizes: the plumbing, not the timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.clients import export_model
from tests.support.servers import embedq
from tests.support.vectors import RECORD_LONG_TEXT, RECORD_QUERIES

pytestmark = pytest.mark.slow


@pytest.mark.slow
def test_eval_queue_path_ranks_like_in_process(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    docs = [RECORD_LONG_TEXT, "Gangnam pasta place, open at 11.", "A vegan bakery closed on Mondays."]
    rows = [{"query": q, "passage": docs[i % 3]} for i, q in enumerate(RECORD_QUERIES)]
    pairs.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = embedq("eval", str(pairs), "--sample", "4", "--seed", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 queries against 3 passages" in result.stdout
    assert "top-10 identical for 4/4 queries" in result.stdout
    table = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("| in-process") or line.startswith("| queue")
    ]
    assert len(table) == 2
    assert table[0].split("|")[3:] == table[1].split("|")[3:]  # same metrics on both paths


@pytest.mark.slow
def test_eval_compares_backends_and_int8_on_the_same_queries(tmp_path: Path, exported: Path) -> None:
    """onnx and openvino must rank exactly as in-process torch; int8 is reported beside fp32."""
    int8 = export_model(tmp_path / "int8", "--quantize", "int8")
    pairs = tmp_path / "pairs.jsonl"
    docs = [RECORD_LONG_TEXT, "Gangnam pasta place, open at 11.", "A vegan bakery closed on Mondays."]
    rows = [{"query": q, "passage": docs[i % 3]} for i, q in enumerate(RECORD_QUERIES)]
    pairs.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = embedq(
        "eval", str(pairs), "--backend", "onnx", "--backend", "openvino",
        "--export", str(exported), "--quantized", str(int8),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("onnx", "openvino"):
        assert f"queue {label} vs in-process torch: top-10 identical for 5/5 queries" in result.stdout
    assert "queue onnx-int8 vs in-process torch" in result.stdout and "differs by design" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == [
        "in-process torch", "queue onnx", "queue openvino", "queue onnx-int8",
    ]  # fmt: skip


@pytest.mark.slow
def test_bench_tiny_run_writes_its_reports(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = embedq(
        "bench",
        "--threads",
        "2",
        "--batch",
        "1,2",
        "--concurrency",
        "1,2",
        "--lengths",
        "short",
        "--requests",
        "6",
        "--max-seconds",
        "5",
        "--target-requests",
        "12",
        "--policies",
        "adaptive",
        "--overhead-batches",
        "10",
        "--backends",
        "torch,onnx",
        "--cache-hit-ratio",
        "0.5",
        "--out",
        str(out),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "results.json").read_text())
    modes = {(s["mode"], s["batch"], s["concurrency"]) for s in report["sweep"]}
    assert modes == {
        ("inproc", 1, 1),
        ("inproc", 2, 1),
        ("naive", 1, 2),
        ("naive", 2, 2),
        ("queue", 1, 1),
        ("queue", 1, 2),
    }
    variants = report["targets"]["policies"]
    assert set(variants) == {"adaptive", "onnx", "onnx+cache"}
    assert variants["onnx"]["backend"] == "onnx" and variants["adaptive"]["backend"] == "torch"
    cached = variants["onnx+cache"]
    assert cached["cache_hit_ratio"] == 0.5 and cached["cache_hit_idle"]["requests"] > 0
    assert cached["cache_stats"]["hits"] > 0 and cached["cache_stats"]["misses"] > 0
    assert report["targets"]["overhead"]["batches"] == 10
    assert "## Targets" in (out / "results.md").read_text()
    assert (out / "chart.png").stat().st_size > 10_000


def test_the_shaped_model_builder_writes_a_servable_e5_family_model(tmp_path: Path) -> None:
    """The e5-large-shaped benchmark model, built small: XLM-R encoder, mean pooling, normalized,
    E5's prompts, served by a worker with the model's own prefixes."""
    from embedq.tools.reference import ReferenceModel
    from embedq.tools.shaped import E5_LARGE, build_shaped_model
    from embedq.worker.encoder import SentenceTransformerEncoder

    assert (E5_LARGE["num_hidden_layers"], E5_LARGE["hidden_size"], E5_LARGE["intermediate_size"]) == (
        24,
        1024,
        4096,
    )
    small = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    path = build_shaped_model(tmp_path / "e5-large-shaped", vocab_size=30522, **small)
    ref = ReferenceModel(str(path))
    assert ref.prompts["query"] == "query: " and ref.model.max_seq_length == 512
    vectors = ref.encode(["연남 카페 추천해줘", "강남역 맛집"], "query: ")
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    encoder = SentenceTransformerEncoder(str(path))
    assert encoder.prefixes == {"query": "query: ", "passage": "passage: "} and encoder.dim == 64
    np.testing.assert_allclose(encoder.encode(["연남 카페 추천해줘"], ["query"])[0], vectors[0], atol=1e-5)
