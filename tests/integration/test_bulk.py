"""Bulk embedding end to end: RQ workers (`rq worker --serializer json`), a real redis-server and
real embedding workers. KorQuAD-derived inputs are built in a temporary folder and deleted."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from embedq import EmbeddingClient
from embedq.bulk import BulkError, BulkOptions, rq_jobs, run_bulk
from embedq.protocol import Heartbeat, Keys
from embedq.tools.corpus import find_korquad, korquad_documents, write_jsonl
from tests.support.fake_encoder import fake_vector
from tests.support.heartbeats import fresh_heartbeats
from tests.support.servers import ROOT, RedisServer, WorkerProcess, embedq, wait_until
from tests.support.vectors import ReferenceModel, cosines

pytestmark = pytest.mark.slow

KORQUAD = find_korquad()
needs_korquad = pytest.mark.skipif(KORQUAD is None, reason="KorQuAD dev set not found (set EMBEDQ_KORQUAD)")
BULK_DOCS = int(os.environ.get("EMBEDQ_BULK_DOCS", "1000"))
"""Documents in the KorQuAD end-to-end test: 1,000 in the default run (about 30 s);
``EMBEDQ_BULK_DOCS=10000`` for the full-size acceptance run (about 4 minutes on 2 cores)."""
RQ_QUEUE = "it-bulk-jobs"


class RQWorker:
    """``embedq bulk worker`` (RQ, embedq's job only) as a child process in a session of its own."""

    def __init__(self, redis_url: str, name: str, *, burst: bool = False, queue: str = RQ_QUEUE) -> None:
        self.log_path = ROOT / f".pytest-rq-{name}.log"
        self._log = self.log_path.open("w")
        args = [sys.executable, "-m", "embedq.cli", "bulk", "worker", "--redis-url", redis_url]
        args += ["--name", f"{name}-{os.getpid()}-{time.monotonic_ns()}", "--worker-ttl", "30"]
        self.proc = subprocess.Popen(
            [*args, *(["--burst"] if burst else []), "--rq-queue", queue],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill_all(self) -> list[int]:
        """SIGKILL the worker and its work horse (which RQ puts in a process group of its own)."""
        pids = [self.proc.pid, *children(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill_all()
        self.log_path.unlink(missing_ok=True)


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def job_status(url: str, job_id: str) -> dict[str, Any]:
    """What ``embedq bulk status --json`` prints (read in-process: polling through a new
    Python process each time would take CPU from the worker being measured)."""
    return rq_jobs.describe(redis.Redis.from_url(url), job_id)


def job_status_cli(url: str, job_id: str) -> dict[str, Any]:
    done = embedq("bulk", "status", job_id, "--redis-url", url, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def bulk_texts(server: RedisServer, worker: WorkerProcess) -> int:
    """Bulk texts the worker has encoded, from its heartbeat."""

    raw = server.client().get(Keys(worker.queue).heartbeat(worker.worker_id))
    return int(Heartbeat.unpack(raw).counts.get("bulk_texts", 0)) if raw else 0


def ids_of(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def model_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    """A worker with the real bundled model, E5-style prefixes, a fresh heartbeat each second."""
    worker = WorkerProcess(
        redis_server.url,
        "it-bulk:requests",
        {
            "EMBED_QUERY_PREFIX": "query: ",
            "EMBED_PASSAGE_PREFIX": "passage: ",
            "EMBED_WORKER_ID": "bulk-model",
            "EMBED_HEARTBEAT_TTL": "3",
        },
    )
    worker.worker_id = "bulk-model"  # type: ignore[attr-defined]
    yield worker
    assert worker.alive, worker.log()
    assert worker.terminate() == 0, worker.log()


@pytest.fixture(scope="module")
def fast_worker(redis_server: RedisServer) -> Iterator[WorkerProcess]:
    """A worker with the model-free encoder: for tests about the job, not the vectors."""
    worker = WorkerProcess(
        redis_server.url,
        "it-bulk-fast:requests",
        {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_WORKER_ID": "bulk-fast"},
    )
    worker.worker_id = "bulk-fast"  # type: ignore[attr-defined]
    yield worker
    assert worker.alive, worker.log()
    assert worker.terminate() == 0, worker.log()


@pytest.fixture
def rq_workers(redis_server: RedisServer) -> Iterator[list[RQWorker]]:
    started: list[RQWorker] = []
    yield started
    for w in started:
        w.stop()


@pytest.mark.slow
@needs_korquad
@pytest.mark.timeout(180 + BULK_DOCS // 4)
def test_a_korquad_document_set_is_embedded_through_rq(
    tmp_path: Path,
    redis_server: RedisServer,
    model_worker: WorkerProcess,
    in_process: ReferenceModel,
    rq_workers: list[RQWorker],
) -> None:
    assert KORQUAD is not None
    source = tmp_path / "korquad.jsonl"
    assert write_jsonl(source, korquad_documents(KORQUAD), BULK_DOCS) == BULK_DOCS
    out = tmp_path / "out"
    submitted = embedq(
        "bulk", "submit", str(source), str(out), "--redis-url", redis_server.url,
        "--queue", model_worker.queue, "--rq-queue", RQ_QUEUE, "--chunk-size", "256",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_status_cli(redis_server.url, job_id)["status"] == "queued"

    rq_workers.append(RQWorker(redis_server.url, "korquad", burst=True))
    seen_progress: list[dict[str, Any]] = []

    def finished() -> bool:
        info = job_status(redis_server.url, job_id)
        if info["progress"] and info["progress"]["phase"] == "encoding":
            seen_progress.append(info["progress"])
        return info["status"] in ("finished", "failed")

    wait_until(finished, 60 + BULK_DOCS / 4, "the bulk job to end", interval=1.0)
    info = job_status_cli(redis_server.url, job_id)
    assert info["status"] == "finished", f"{info}\n{rq_workers[0].log()}"
    assert rq_workers[0].wait(30) == 0

    # progress was reported while it ran: done/total, rate and ETA
    assert seen_progress, "no progress seen while the job ran"
    mid = seen_progress[len(seen_progress) // 2]
    assert (
        mid["total"] == BULK_DOCS
        and 0 <= mid["done"] <= BULK_DOCS
        and mid["chunks_total"] == -(-BULK_DOCS // 256)
    )
    assert info["progress"]["done"] == BULK_DOCS and info["progress"]["phase"] == "done"
    assert info["result"]["rows"] == BULK_DOCS
    r = info["result"]
    print(f"\n{BULK_DOCS} KorQuAD documents through RQ: {r['elapsed_s']} s, {r['rate']} docs/s")
    rendered = embedq("bulk", "status", job_id, "--redis-url", redis_server.url).stdout
    assert f"{BULK_DOCS}/{BULK_DOCS} documents (100.0%)" in rendered

    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    vectors = np.load(out / "vectors.npy", mmap_mode="r")
    assert vectors.shape == (BULK_DOCS, 384) and vectors.dtype == np.float32
    assert ids_of(out / "ids.jsonl") == [r["id"] for r in records]
    assert (out / "errors.jsonl").read_text() == ""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == BULK_DOCS and manifest["dim"] == 384
    assert (
        manifest["prefix"] == "passage: " and manifest["normalized"] is True and manifest["kind"] == "passage"
    )
    assert manifest["model"].endswith("model") and manifest["input"]["sha256"]
    assert manifest["created"] <= manifest["completed"]

    sample = sorted(random.Random(0).sample(range(BULK_DOCS), 100))
    expected = in_process.encode([records[i]["text"] for i in sample], "passage: ")
    assert cosines(np.asarray(vectors[sample]), expected).min() >= 0.99999
    # and what the online path returns for the same texts as passages
    client = EmbeddingClient.from_url(redis_server.url, queue=model_worker.queue, timeout=60)
    online = np.asarray(client.embed_documents([records[i]["text"] for i in sample[:16]]))
    assert cosines(np.asarray(vectors[sample[:16]]), online).min() >= 0.99999


@pytest.mark.slow
@needs_korquad
@pytest.mark.timeout(400)
def test_a_job_killed_halfway_resumes_to_the_same_output_redoing_at_most_one_chunk(
    tmp_path: Path,
    redis_server: RedisServer,
    model_worker: WorkerProcess,
    rq_workers: list[RQWorker],
) -> None:
    assert KORQUAD is not None
    n, chunk = 600, 60
    questions = ({"id": d["id"], "text": d["text"]} for d in korquad_documents(KORQUAD) if d["id"][0] == "q")
    source = tmp_path / "questions.jsonl"
    write_jsonl(source, questions, n)
    options = BulkOptions(queue=model_worker.queue, chunk_size=chunk)
    reference = run_bulk(source, tmp_path / "reference", options, redis_server.client())
    assert reference["rows"] == n

    out = tmp_path / "out"
    submitted = embedq(
        "bulk", "submit", str(source), str(out), "--redis-url", redis_server.url, "--queue",
        model_worker.queue, "--rq-queue", RQ_QUEUE, "--chunk-size", str(chunk), "--retries", "0",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    fresh_heartbeats(redis_server.client(), Keys(model_worker.queue))  # it counted the reference run
    before = bulk_texts(redis_server, model_worker)
    first = RQWorker(redis_server.url, "doomed")
    rq_workers.append(first)

    def halfway() -> bool:
        p = job_status(redis_server.url, job_id)["progress"]
        return bool(p) and p["phase"] == "encoding" and p["done"] >= n // 2

    wait_until(halfway, 120, "the job to be half done", interval=0.2)
    killed = first.kill_all()
    assert len(killed) == 2, f"expected the RQ worker and its work horse, got {killed}"
    state = json.loads((out / "state.json").read_text())
    assert 0 < len(state["done"]) < n // chunk and not state["complete"]
    assert job_status(redis_server.url, job_id)["status"] == "started"  # RQ does not know yet

    resumed = embedq("bulk", "resume", job_id, "--redis-url", redis_server.url)
    assert resumed.returncode == 0, resumed.stderr
    new_id = resumed.stdout.strip()
    second = RQWorker(redis_server.url, "rescuer", burst=True)
    rq_workers.append(second)
    assert second.wait(180) == 0, second.log()
    info = job_status(redis_server.url, new_id)
    assert info["status"] == "finished", info
    assert info["result"]["runs"] == 2

    # the same rows in the same order; each vector the model's for its text (not bit-equal: a
    # text's float rounding depends on the batch it was padded into, and batches follow timing)
    assert (out / "ids.jsonl").read_text() == (tmp_path / "reference" / "ids.jsonl").read_text()
    resumed_vectors = np.load(out / "vectors.npy")
    reference_vectors = np.load(tmp_path / "reference" / "vectors.npy")
    assert resumed_vectors.shape == reference_vectors.shape
    assert cosines(resumed_vectors, reference_vectors).min() >= 0.99999
    # the worker's own count: every text once, plus at most the one chunk that was cut off
    # (what was encoded of it, and what it had queued, which the worker still encoded)
    wait_until(lambda: bulk_texts(redis_server, model_worker) >= before + n, 10, "the heartbeat count")
    fresh_heartbeats(redis_server.client(), Keys(model_worker.queue))  # texts encoded after the job ended
    encoded = bulk_texts(redis_server, model_worker) - before
    print(f"\nkilled at {state['done']} of {n // chunk} chunks; the worker encoded {encoded} texts for {n}")
    assert n <= encoded <= n + chunk, f"encoded {encoded} texts for {n} documents"


def test_bad_documents_are_listed_and_the_rest_embedded(
    tmp_path: Path, redis_server: RedisServer, fast_worker: WorkerProcess
) -> None:
    source = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"document {i}"}) for i in range(50)]
    lines[10] = json.dumps({"id": "d10", "text": ""})
    lines[20] = json.dumps({"text": "orphan"})
    lines[30] = "{broken"
    lines[40] = json.dumps({"id": "d40", "text": "x" * 101})
    source.write_text("\n".join(lines) + "\n")
    url = redis_server.url
    common = ["--redis-url", url, "--queue", fast_worker.queue, "--max-chars", "100", "--quiet"]

    done = embedq("bulk", "run", str(source), str(tmp_path / "out"), *common)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 46 and summary["errors"] == 4
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"], e["code"]) for e in errors] == [
        (11, "d10", "empty_text"),
        (21, None, "missing_id"),
        (31, None, "invalid_json"),
        (41, "d40", "text_too_long"),
    ]
    assert len(np.load(tmp_path / "out" / "vectors.npy")) == 46
    assert "d10" not in ids_of(tmp_path / "out" / "ids.jsonl")

    again = embedq("bulk", "run", str(source), str(tmp_path / "out"), *common)
    assert again.returncode == 0 and json.loads(again.stdout)["encoded_this_run"] == 0  # already complete

    strict = embedq("bulk", "run", str(source), str(tmp_path / "strict"), *common, "--fail-fast")
    assert strict.returncode == 1
    empty = "line 11: text is empty or only whitespace or invisible characters (empty_text; id 'd10')"
    assert empty in strict.stderr

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "z", "text": "another input"}) + "\n")
    refused = embedq("bulk", "run", str(other), str(tmp_path / "out"), *common)
    assert refused.returncode == 1 and "holds the output of another input" in refused.stderr
    assert ids_of(tmp_path / "out" / "ids.jsonl")[0] == "d0"  # the earlier output is untouched
    replaced = embedq("bulk", "run", str(other), str(tmp_path / "out"), *common, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert ids_of(tmp_path / "out" / "ids.jsonl") == ["z"]


def test_a_complete_output_whose_files_were_deleted_or_cut_is_not_done(
    tmp_path: Path, redis_server: RedisServer, fast_worker: WorkerProcess
) -> None:
    """Issue 21, finding 5: before, a finished job whose vectors.npy was deleted or truncated said
    "already complete: nothing to do" with rc 0."""
    source = tmp_path / "docs.jsonl"
    write_jsonl(source, ({"id": f"d{i}", "text": f"document {i}"} for i in range(40)), 40)
    common = ["--redis-url", redis_server.url, "--queue", fast_worker.queue, "--quiet"]
    out = tmp_path / "out"
    assert embedq("bulk", "run", str(source), str(out), *common).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["checksums"]) == {"vectors.npy", "ids.jsonl"} and manifest["duplicate_ids"] == 0
    assert embedq("bulk", "run", str(source), str(out), *common).returncode == 0  # whole: nothing to do

    vectors = (out / "vectors.npy").read_bytes()
    (out / "vectors.npy").write_bytes(vectors[: len(vectors) // 2])
    cut = embedq("bulk", "run", str(source), str(out), *common)
    assert cut.returncode == 1 and "cut short" in cut.stderr, cut.stderr
    (out / "vectors.npy").write_bytes(vectors[:-4] + b"\0\0\0\0")  # same size, other bytes
    changed = embedq("bulk", "run", str(source), str(out), *common)
    assert changed.returncode == 1 and "changed since the job completed" in changed.stderr, changed.stderr
    (out / "vectors.npy").unlink()
    gone = embedq("bulk", "run", str(source), str(out), *common)
    assert gone.returncode == 1 and "is gone since the job completed" in gone.stderr, gone.stderr
    again = embedq("bulk", "run", str(source), str(out), *common, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert len(np.load(out / "vectors.npy")) == 40


def test_duplicate_ids_are_listed_or_kept_by_option(
    tmp_path: Path, redis_server: RedisServer, fast_worker: WorkerProcess
) -> None:
    source = tmp_path / "docs.jsonl"
    docs = [{"id": "a", "text": "first"}, {"id": "a", "text": "second"}, {"id": 1, "text": "one"},
            {"id": "1", "text": "one again"}, {"id": "b", "text": "other"}]  # fmt: skip
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = ["--redis-url", redis_server.url, "--queue", fast_worker.queue, "--quiet"]
    strict = embedq("bulk", "run", str(source), str(tmp_path / "strict"), *common)
    assert strict.returncode == 0, strict.stderr
    assert ids_of(tmp_path / "strict" / "ids.jsonl") == ["a", 1, "b"]  # the first of each id wins
    errors = [json.loads(line) for line in (tmp_path / "strict" / "errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["code"]) for e in errors] == [(2, "duplicate_id"), (4, "duplicate_id")]
    assert "line 1" in errors[0]["message"] and "--keep-duplicate-ids" in errors[0]["message"]
    kept = embedq("bulk", "run", str(source), str(tmp_path / "kept"), *common, "--keep-duplicate-ids")
    assert kept.returncode == 0, kept.stderr
    assert ids_of(tmp_path / "kept" / "ids.jsonl") == ["a", "a", 1, "1", "b"]
    assert json.loads((tmp_path / "kept" / "manifest.json").read_text())["duplicate_ids"] == 2


def test_documents_over_the_token_window_are_cut_and_listed_or_refused(
    tmp_path: Path, redis_server: RedisServer, model_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    long_text = "문서가 모델의 토큰 창보다 훨씬 깁니다. " * 300
    source = tmp_path / "docs.jsonl"
    texts = ["짧은 문서", long_text, "또 짧은 문서"]
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    common = ["--redis-url", redis_server.url, "--queue", model_worker.queue, "--quiet"]
    done = embedq("bulk", "run", str(source), str(tmp_path / "out"), *common)
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in (tmp_path / "out" / "truncated.jsonl").read_text().splitlines()]
    assert listed == [{"row": 1, "id": "d1"}]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["truncated"] == 1
    vectors = np.load(tmp_path / "out" / "vectors.npy")
    assert cosines(vectors, in_process.encode(texts, "passage: ")).min() >= 0.99999  # cut as the model cuts

    strict = embedq("bulk", "run", str(source), str(tmp_path / "strict"), *common, "--no-truncate")
    assert strict.returncode == 1
    assert "line 2 (id 'd1')" in strict.stderr and "tokens" in strict.stderr, strict.stderr


def test_a_worker_refusal_fails_the_job_with_the_reason(
    tmp_path: Path, redis_server: RedisServer, fast_worker: WorkerProcess
) -> None:
    source = tmp_path / "docs.csv"
    source.write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in range(20)))
    done = embedq(
        "bulk", "run", str(source), str(tmp_path / "out"), "--redis-url", redis_server.url,
        "--queue", fast_worker.queue, "--batch-size", "9", "--quiet",
    )  # fmt: skip
    assert done.returncode == 1
    assert "accepts at most 8 per request (EMBED_BULK_MAX_BATCH)" in done.stderr
    assert "Use a smaller --batch-size" in done.stderr


def test_online_queries_wait_behind_at_most_one_bulk_batch(
    tmp_path: Path, redis_server: RedisServer, rq_workers: list[RQWorker]
) -> None:
    delay = 0.2
    worker = WorkerProcess(
        redis_server.url,
        "it-bulk-slow:requests",
        {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_ENCODE_DELAY": str(delay)},
    )
    try:
        source = tmp_path / "docs.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": f"doc {i}"}) + "\n" for i in range(400)))
        submitted = embedq(
            "bulk", "submit", str(source), str(tmp_path / "out"), "--redis-url", redis_server.url,
            "--queue", worker.queue, "--rq-queue", RQ_QUEUE,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        rq_workers.append(RQWorker(redis_server.url, "slow", burst=True))
        r = redis_server.client()
        keys = Keys(worker.queue)
        wait_until(lambda: r.llen(keys.bulk) >= 2, 30, "bulk requests queued")
        client = EmbeddingClient.from_url(redis_server.url, queue=worker.queue, timeout=30)
        waits = []
        for i in range(8):
            call = client.call([f"question {i}"])
            client.send(call)
            client.wait(call)
            reply = call.replies[0]
            assert reply is not None
            waits.append(reply.queue_ms / 1000.0)
            pending = r.llen(keys.bulk) + r.llen(keys.bulk_processing(worker.worker_id))
            assert pending > 0, "the bulk job ran dry: the test proves nothing"
            time.sleep(random.Random(i).uniform(0, delay))
        # each question waited for the batch being encoded (<= delay), never for the queued bulk
        # requests (>= 2 x delay); 0.2 s of slack for the fake encoder's own work and polling
        assert max(waits) < delay + 0.2, waits
    finally:
        worker.terminate()


@pytest.mark.slow
def test_memory_stays_bounded_for_a_large_input(
    tmp_path: Path, redis_server: RedisServer, fast_worker: WorkerProcess
) -> None:
    n = 100_000
    source = tmp_path / "large.jsonl"
    with source.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc-{i}", "text": f"document number {i} " * 8}) + "\n")
    command = ["bulk", "run", str(source), str(tmp_path / "out"), "--redis-url", redis_server.url]
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedq.cli", *command, "--queue", fast_worker.queue, "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    # VmHWM: the kernel's high-water mark of the process's own resident memory. (ru_maxrss would
    # also count the copy of this test process that existed between fork and exec.)
    peak_kb = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
            peak_kb = max(peak_kb, int(line.split()[1]))
        time.sleep(0.1)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    assert proc.returncode == 0
    assert json.loads(stdout)["rows"] == n
    peak_mb = peak_kb / 1024
    print(f"peak RSS of the job process for {n} lines: {peak_mb:.0f} MB")
    assert 20 < peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"
    assert np.load(tmp_path / "out" / "vectors.npy", mmap_mode="r").shape == (n, 384)


def test_a_redis_restart_mid_job_loses_nothing(
    tmp_path: Path, redis_server_restartable: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="embedq.bulk")
    server = redis_server_restartable
    worker = WorkerProcess(
        server.url,
        "it-bulk-restart:requests",
        {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_ENCODE_DELAY": "0.02"},
    )
    try:
        n = 800
        texts = [f"문서 {i} " * (1 + i % 7) for i in range(n)]
        source = tmp_path / "docs.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        progress: list[int] = []
        outcome: dict[str, Any] = {}

        def job() -> None:
            options = BulkOptions(queue=worker.queue, chunk_size=200)
            client = server.client()
            outcome.update(
                run_bulk(
                    source, tmp_path / "out", options, client, on_progress=lambda p: progress.append(p.done)
                )
            )

        runner = threading.Thread(target=job)
        runner.start()
        wait_until(lambda: progress and progress[-1] >= 250, 60, "a quarter of the job done")
        server.kill()  # no persistence: the queued bulk requests are gone
        wait_until(lambda: "lost Redis" in caplog.text, 30, "the job to notice the outage")
        server.start()
        runner.join(120)
        assert not runner.is_alive() and outcome.get("rows") == n, outcome
        assert "resending this chunk's unanswered requests" in caplog.text
        assert progress[-1] == n  # every document counted once: no reply was taken twice
        vectors = np.load(tmp_path / "out" / "vectors.npy")
        expected = np.stack([fake_vector("passage", t, 384) for t in texts])
        np.testing.assert_allclose(vectors, expected, rtol=1e-6)
        assert ids_of(tmp_path / "out" / "ids.jsonl") == list(range(n))
    finally:
        worker.terminate()


def test_with_no_worker_the_job_says_so_and_fails_at_its_deadline(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedq.bulk import window

    monkeypatch.setattr(window, "QUIET_S", 0.5)
    monkeypatch.setattr(window, "BLOCK_S", 0.5)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": f"doc {i}"}) + "\n" for i in range(20)))
    phases: list[str] = []
    options = BulkOptions(queue="it-nobody:requests", request_timeout=3)
    with pytest.raises(BulkError, match=r"no worker answered a bulk request within 3 s.*embedq status"):
        run_bulk(
            source,
            tmp_path / "out",
            options,
            redis_server.client(),
            on_progress=lambda p: phases.append(p.phase),
        )
    assert "waiting: no live worker on queue 'it-nobody:requests'" in phases
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["done"] == [] and not state["complete"]
    redis_server.client().delete("it-nobody:bulk")


def test_a_bulk_worker_stops_at_once_even_after_losing_its_channel_subscription(
    redis_server: RedisServer,
) -> None:
    # RQ stops its command-channel thread with redis-py's stop(), which joins it; a thread that
    # lost its subscription waits up to 60 s for one, and the worker hung that long on exit
    from embedq.bulk.rq_worker import bulk_worker

    worker = bulk_worker(redis_server.client(), ["it-bulk-stop"])
    worker.subscribe()
    wait_until(lambda: worker.pubsub.subscribed, 5, "the channel subscription")
    time.sleep(0.3)  # the thread is reading the channel
    worker.pubsub.unsubscribe()  # it reads this and waits for a subscription again
    wait_until(lambda: not worker.pubsub.subscribed, 5, "the subscription to go")
    time.sleep(0.3)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5
