"""The eval and bench commands' plumbing, on tiny synthetic data: no model, no timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedq.cli import build_parser
from embedq.tools import bench
from embedq.tools import evaluate as ev


def test_pairs_from_jsonl_with_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"q": "질문 1", "p": "문단 A"}\n\n{"q": "질문 2", "p": "문단 B"}\n', encoding="utf-8")
    assert ev.load_pairs(path, query_field="q", passage_field="p") == [
        ("질문 1", "문단 A"),
        ("질문 2", "문단 B"),
    ]


def test_jsonl_missing_field_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "a", "passage": "b"}\n{"query": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: missing field 'passage'"):
        ev.load_pairs(path)


def test_pairs_from_squad_format(tmp_path: Path) -> None:
    squad = {
        "version": "KorQuAD_v1.0_dev",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "문단 A",
                        "qas": [{"question": "질문 1", "id": "1"}, {"question": "질문 2", "id": "2"}],
                    },
                    {"context": "문단 B", "qas": [{"question": "질문 3", "id": "3"}]},
                ],
            }
        ],
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    data = ev.build_set(ev.load_pairs(path), sample=None, seed=0)
    assert data.corpus == ["문단 A", "문단 B"]
    assert data.queries == ["질문 1", "질문 2", "질문 3"]
    assert data.positives == [0, 0, 1]


def test_sample_is_seeded_and_corpus_stays_whole() -> None:
    pairs = [(f"q{i}", f"p{i // 3}") for i in range(30)]
    a = ev.build_set(pairs, sample=5, seed=7)
    b = ev.build_set(pairs, sample=5, seed=7)
    assert a == b
    assert len(a.queries) == 5
    assert len(a.corpus) == 10
    assert all(a.corpus[p] == f"p{int(q[1:]) // 3}" for q, p in zip(a.queries, a.positives, strict=True))


def test_metrics_on_known_rankings() -> None:
    top = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 3]])
    m = ev.metrics(top, [0, 0, 0, 0])  # ranks 1, 2, 3, missing
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["recall@5"] == pytest.approx(0.75)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)


def test_rankings_and_tie_aware_comparison() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    top, scores = ev.rankings(q, p, k=3)
    assert top.tolist() == [[0, 2, 1], [1, 2, 0]]
    swapped = top.copy()
    swapped[0, [1, 2]] = swapped[0, [2, 1]]
    assert ev.compare_rankings(top, top, scores, 1e-6) == {
        "identical": 2,
        "ties": 0,
        "differ": 0,
        "queries": 2,
    }
    assert ev.compare_rankings(top, swapped, scores, 1e-6)["differ"] == 1
    assert ev.compare_rankings(top, swapped, scores, 1.0)["ties"] == 1


def fake_result() -> dict[str, object]:
    def cell(mode: str, conc: int, batch: int, lat: float) -> dict[str, object]:
        c = bench.Cell(
            mode=mode,
            threads=2,
            length="short",
            batch=batch,
            concurrency=conc,
            latencies_ms=[lat, lat * 1.1, lat * 1.3],
            elapsed_s=lat * 3 / 1000 / conc,
        )
        return c.summary()

    sweep = [cell("inproc", 1, b, 10.0 * b**0.5) for b in (1, 8)]
    sweep += [cell("naive", 10, 1, 100.0), cell("queue", 1, 1, 11.0), cell("queue", 10, 1, 40.0)]
    policy = {
        "idle": cell("queue", 1, 1, 11.0),
        "c10": cell("queue", 10, 1, 40.0),
        "t1_throughput_ratio": 0.97,
        "t2_p95_ratio": 0.4,
        "t3_idle_extra_ms": 1.2,
    }
    return {
        "model": "/x/model",
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "python": "3.11",
            "torch": "2",
            "date": "d",
            "sentence_transformers": "6",
            "redis_py": "8",
        },
        "sweep": sweep,
        "targets": {
            "inproc_bs1": sweep[0],
            "inproc_bs8": sweep[1],
            "naive_c10": sweep[2],
            "policies": {"adaptive": policy, "fixed-50ms": {**policy, "t3_idle_extra_ms": 55.0}},
            "overhead": {"batches": 10, "p50_ms": 0.6, "p95_ms": 0.9},
        },
    }


def test_reports_are_written(tmp_path: Path) -> None:
    paths = bench.write_reports(fake_result(), tmp_path / "out")
    assert [p.name for p in paths] == ["results.md", "results.json", "chart.png"]
    md = paths[0].read_text(encoding="utf-8")
    assert "| 3. one request at idle" in md
    assert "55.00 ✗" in md  # the fixed policy misses the idle target, and the report says so
    assert "| inproc | 2 | short | 8 |" in md
    assert json.loads(paths[1].read_text())["targets"]["overhead"]["p50_ms"] == 0.6
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_percentile_and_cell_summary() -> None:
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert bench.percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    s = bench.Cell("queue", 2, "short", 1, 10, latencies_ms=[10.0] * 20, elapsed_s=0.5).summary()
    assert (s["requests"], s["texts_per_s"], s["per_text_ms"]) == (20, 40.0, 25.0)


def test_throughput_comes_from_the_steady_middle() -> None:
    # 100 calls: a slow start and a ragged end around 80 calls at 10 per second
    done = [0.5 * i for i in range(10)] + [5 + 0.1 * i for i in range(80)] + [13 + 0.5 * i for i in range(10)]
    calls, seconds = bench.steady_window(done)
    assert calls / seconds == pytest.approx(10.0, rel=0.01)
    cell = bench.Cell("queue", 2, "short", 8, 10)
    cell.record([1.0] * 100, 20.0, done)
    assert cell.texts_per_s() == pytest.approx(80.0, rel=0.01)


def test_texts_are_distinct_per_request(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("짧은 질문\n" + "긴 문서 " * 30 + "\n", encoding="utf-8")
    texts = bench.Texts.from_file(path)
    a, b = texts.take("short", 2), texts.take("long", 1)
    assert len(set(a + b)) == 3
    assert b[0].startswith("긴 문서")


def test_cli_parses_quick_and_lists() -> None:
    ns = build_parser().parse_args(
        ["bench", "--quick", "--threads", "1,2", "--policies", "adaptive", "--out", "x"]
    )
    assert ns.threads == (1, 2)
    assert ns.policies == ("adaptive",)
    assert ns.quick is True and build_parser().parse_args(["bench", "--out", "x"]).quick is False
    with pytest.raises(SystemExit):  # no default folder: a quick run never overwrites committed reports
        build_parser().parse_args(["bench", "--quick"])
    ns = build_parser().parse_args(["eval", "data.json", "--model", "a", "--model", "b", "--sample", "9"])
    assert (ns.model, ns.sample) == (["a", "b"], 9)


def test_repeating_texts_repeat_at_exactly_the_stated_share() -> None:
    feed = bench.RepeatingTexts(bench.Texts(["q"], ["l"]), 0.25, ["again"])
    texts = feed.take("short", 40) + feed.take("short", 40)
    assert texts.count("again") == 20
    assert len(set(texts) - {"again"}) == 60  # the others are all distinct
    assert bench.RepeatingTexts(bench.Texts(["q"], ["l"]), 1.0, ["a", "b"]).take("short", 4) == ["a", "b"] * 2


def test_variants_put_policies_on_torch_backends_on_an_export_and_the_cache_last() -> None:
    plan = bench.Plan(policies=("adaptive", "fixed-50ms"), backends=("torch", "onnx"), cache_hit_ratio=0.5)
    chosen = bench.variants(plan, "m", "/exports/m", "redis://cache")
    assert list(chosen) == ["adaptive", "fixed-50ms", "onnx", "onnx+cache"]
    assert (
        chosen["onnx"].env["EMBED_BACKEND"] == "onnx"
        and chosen["onnx"].env["EMBEDDING_MODEL"] == "/exports/m"
    )
    assert chosen["onnx+cache"].cache and chosen["onnx+cache"].env["EMBED_CACHE_URL"] == "redis://cache"
    assert "EMBED_CACHE_URL" not in chosen["onnx"].env
    with pytest.raises(ValueError, match="backends"):
        bench.Plan(backends=("tensorrt",)).check()
    with pytest.raises(ValueError, match="hit ratio"):
        bench.Plan(cache_hit_ratio=1.5).check()
