"""The bulk job's pure parts: reading inputs, planning chunks and requests, the output files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedq.bulk.options import BulkOptions
from embedq.bulk.output import OutputDir, OutputError, VectorFile
from embedq.bulk.plan import chunk_count, chunked, pack
from embedq.bulk.reader import BadDocument, BulkInputError, Document, DocumentReader, InputSpec


def read(path: Path, **spec: object) -> tuple[list[Document], list[BadDocument], DocumentReader]:
    reader = DocumentReader(path, InputSpec(**spec))  # type: ignore[arg-type]
    items = list(reader)
    return (
        [d for d in items if isinstance(d, Document)],
        [d for d in items if isinstance(d, BadDocument)],
        reader,
    )


def test_jsonl_records_bad_ones_with_line_numbers_and_codes(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "text": "first"},
        {"id": 7, "text": "integer id"},
        "",
        {"text": "no id"},
        {"id": "b"},
        {"id": "c", "text": "   "},
        {"id": "d", "text": 12},
        {"id": True, "text": "bool id"},
        {"id": "e", "text": "x" * 21},
        "{not json",
        "[1, 2]",
        {"id": "f", "text": "last"},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    docs, bad, reader = read(path, max_chars=20)
    assert [(d.line, d.id, d.text) for d in docs] == [
        (1, "a", "first"),
        (2, 7, "integer id"),
        (12, "f", "last"),
    ]
    assert [(b.line, b.code) for b in bad] == [
        (4, "missing_id"),
        (5, "missing_text"),
        (6, "empty_text"),
        (7, "invalid_text"),
        (8, "invalid_id"),
        (9, "text_too_long"),
        (10, "invalid_json"),
        (11, "invalid_document"),
    ]
    assert bad[0].to_json()["id"] is None and bad[1].to_json()["id"] == "b"
    assert "limit is 20" in bad[5].message
    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert reader.size == path.stat().st_size


def test_field_names_are_configurable_and_bad_utf8_is_one_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.ndjson"
    path.write_bytes(
        b'\xef\xbb\xbf{"doc_id": "x", "body": "\xec\x95\x88\xeb\x85\x95"}\n{"doc_id": "y", "body": "\xff"}\n'
    )
    docs, bad, _ = read(path, id_field="doc_id", text_field="body")
    assert [(d.id, d.text) for d in docs] == [("x", "안녕")]
    assert [(b.line, b.code) for b in bad] == [(2, "invalid_utf8")]


def test_csv_and_tsv_with_quoted_newlines_report_the_records_first_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.csv"
    path.write_text('id,text\n1,plain\n2,"two\nlines"\n,no id\n3,\n4,after\n', encoding="utf-8")
    docs, bad, _ = read(path)
    assert [(d.line, d.id, d.text) for d in docs] == [
        (2, "1", "plain"),
        (3, "2", "two\nlines"),
        (7, "4", "after"),
    ]
    assert [(b.line, b.code) for b in bad] == [(5, "missing_id"), (6, "empty_text")]
    tsv = tmp_path / "docs.tsv"
    tsv.write_text("text\tid\nhello\tk1\n", encoding="utf-8")
    docs, _, _ = read(tsv)
    assert [(d.id, d.text) for d in docs] == [("k1", "hello")]


def test_a_csv_without_the_columns_is_refused_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "docs.csv"
    path.write_text("key,body\n1,x\n", encoding="utf-8")
    with pytest.raises(BulkInputError, match=r"no column 'id'.*--id-field"):
        read(path)


def test_gzip_inputs_are_read_and_hashed_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(1000):
            f.write(json.dumps({"id": i, "text": f"text {i}"}) + "\n")
    docs, bad, reader = read(path)
    assert len(docs) == 1000 and not bad
    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_formats_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "docs.txt").write_text("x")
    with pytest.raises(BulkInputError, match="--format jsonl, csv or tsv"):
        DocumentReader(tmp_path / "docs.txt", InputSpec())
    with pytest.raises(BulkInputError, match="does not exist"):
        DocumentReader(tmp_path / "missing.jsonl", InputSpec())
    with pytest.raises(BulkInputError, match="unknown input format"):
        DocumentReader(tmp_path / "docs.txt", InputSpec(format="xml"))


def test_chunks_are_consecutive_rows() -> None:
    chunks = list(chunked(range(10), 4))
    assert [(c.index, c.start, c.items) for c in chunks] == [
        (0, 0, [0, 1, 2, 3]),
        (1, 4, [4, 5, 6, 7]),
        (2, 8, [8, 9]),
    ]
    assert chunk_count(10, 4) == 3 and chunk_count(8, 4) == 2 and chunk_count(0, 4) == 0


def test_requests_are_packed_longest_first_within_count_and_character_budgets() -> None:
    texts = ["a" * n for n in (5, 50, 10, 40, 30, 1, 200, 2)]
    groups = pack(texts, max_texts=3, max_chars=100)
    assert groups == [[6], [1, 3], [4, 2, 0], [7, 5]]
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    for g in groups:
        assert len(g) <= 3
        assert sum(len(texts[i]) for i in g) <= 100 or len(g) == 1
    assert pack(texts, max_texts=3, max_chars=100) == groups  # a rerun forms the same batches


def test_the_matrix_is_written_in_place_and_loads_with_numpy(tmp_path: Path) -> None:
    path = tmp_path / "vectors.npy"
    matrix = VectorFile.create(path, 5, 3)
    block = np.arange(6, dtype=np.float32).reshape(2, 3)
    matrix.write(3, block)
    matrix.close()
    loaded = np.load(path)
    assert loaded.shape == (5, 3) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[3:], block)
    np.testing.assert_array_equal(loaded[:3], 0)
    again = VectorFile.open(path, 5, 3)
    again.write(0, np.ones((1, 3), np.float32))
    again.close()
    assert np.load(path)[0].tolist() == [1, 1, 1]
    with pytest.raises(OutputError, match="shape"):
        VectorFile.open(path, 6, 3)
    with pytest.raises(ValueError, match="cannot write"):
        VectorFile.open(path, 5, 3).write(4, block)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(OutputError, match="cut short"):
        VectorFile.open(path, 5, 3)


def test_one_output_directory_is_written_by_one_job_at_a_time(tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "out")
    with (
        out.locked(),
        pytest.raises(OutputError, match=f"being written by pid {os.getpid()}"),
        OutputDir(tmp_path / "out").locked(),
    ):
        pass
    with out.locked():  # released
        out.save_state({"done": [1, 2]})
        assert out.load_state() == {"done": [1, 2], "version": 1}


def test_options_round_trip_through_json_and_refuse_unknown_names() -> None:
    options = BulkOptions(batch_size=4, chunk_size=100, kind="query")
    assert BulkOptions.from_json(json.loads(json.dumps(options.to_json()))) == options
    with pytest.raises(ValueError, match="unknown bulk option"):
        BulkOptions.from_json({"batchsize": 4})
    with pytest.raises(ValueError, match="batch_size must be positive"):
        BulkOptions(batch_size=0)
    with pytest.raises(ValueError, match="kind"):
        BulkOptions(kind="document")


def test_status_text_shows_progress_and_flags_a_silent_started_job() -> None:
    import time

    from embedq.bulk.rq_jobs import render

    progress = {
        "phase": "encoding",
        "done": 250,
        "total": 1000,
        "errors": 3,
        "chunks_done": 2,
        "chunks_total": 8,
        "rate": 50.0,
        "eta_s": 15.0,
        "updated": time.time(),
    }
    info = {"id": "j1", "status": "started", "description": "embed a -> b", "progress": progress}
    text = render(info)
    assert "encoding: 250/1000 documents (25.0%), chunks 2/8, 3 bad, 50.0 docs/s, ETA 15 s" in text
    assert "no progress" not in text
    info["progress"] = {**progress, "updated": time.time() - 600}
    assert "no progress for 600 s" in render(info) and "embedq bulk resume j1" in render(info)
    failed = {**info, "status": "failed", "error": "BulkError: no worker answered"}
    assert "error: BulkError: no worker answered" in render(failed)
