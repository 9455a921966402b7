"""Promises kept under hostile conditions, each with a real redis-server and real worker processes:
Redis refusing (out of memory, a stray key of the wrong type), clocks that disagree, huge and
undecodable requests, texts over the token window, a killed worker, an evicting Redis, overload,
and producers reusing ids. Model-free workers (the fake encoder) where the model is not the point."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from embedq import EmbeddingClient, EmbeddingError, EmbeddingTimeout, EmbedqError
from embedq.protocol import Keys, new_request_id
from embedq.workers import live_workers
from tests.support.fake_encoder import fake_vector
from tests.support.heartbeats import fresh_heartbeats
from tests.support.requests import make_request, now_ms
from tests.support.servers import ROOT, RedisServer, WorkerProcess, wait_until
from tests.support.vectors import ReferenceModel, cosines

pytestmark = pytest.mark.slow

FAKE = {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_TEST_DIM": "8"}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    yield s
    s.stop()


def worker_for(server: RedisServer, queue: str, *, wait_ready: bool = True, **env: str) -> WorkerProcess:
    return WorkerProcess(server.url, queue, {**FAKE, **env}, wait_ready=wait_ready)


def health(server: RedisServer, queue: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "embedq.worker",
            "health",
            "--any",
            "--redis-url",
            server.url,
            "--queue",
            queue,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


# --- 2. Redis errors never end a worker ----------------------------------------------------------


def test_out_of_memory_is_waited_out_and_nothing_held_is_lost(server: RedisServer) -> None:
    queue = "oom:requests"
    worker = worker_for(server, queue, EMBED_TEST_ENCODE_DELAY="1.0")
    admin = server.client()
    try:
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=30)
        call = client.call(["메모리가 부족해요"])
        client.send(call)
        wait_until(lambda: admin.llen(Keys(queue).processing(worker_id(admin, queue))) == 1, 5, "the take")
        admin.config_set("maxmemory", 1)  # noeviction (the default): every write that grows memory fails
        wait_until(lambda: "Redis is at its maxmemory" in worker.log(), 10, "the OOM to be logged")
        wait_until(lambda: trouble_count(admin, queue) >= 3, 10, "a few more failed attempts, with backoff")
        report = health(server, queue)
        assert report.returncode == 1 and "OOM" in report.stdout, report.stdout
        assert worker.alive
        admin.config_set("maxmemory", 0)
        vectors = client.wait(call)  # the request was never lost: answered once Redis takes writes
        np.testing.assert_allclose(vectors[0], fake_vector("query", "메모리가 부족해요"), rtol=1e-6)
        assert worker.log().count("Redis is at its maxmemory") == 1, worker.log()
        wait_until(lambda: health(server, queue).returncode == 0, 10, "health to recover")
    finally:
        admin.config_set("maxmemory", 0)
        assert worker.terminate() == 0, worker.log()


def trouble_count(client: redis.Redis, queue: str) -> int:
    """How many Redis errors in a row the (one) worker on ``queue`` reports in its heartbeat."""
    beats = list(live_workers(client, Keys(queue)).values())
    trouble = beats[0].redis_trouble if beats else None
    return int(trouble.get("count", 0)) if trouble else 0


def worker_id(client: redis.Redis, queue: str) -> str:
    ids = list(live_workers(client, Keys(queue)))
    return ids[0] if ids else "none"


def test_a_reply_key_of_the_wrong_type_dead_letters_that_request_only(server: RedisServer) -> None:
    queue = "wrongtype:requests"
    worker = worker_for(server, queue)
    admin = server.client()
    keys = Keys(queue)
    try:
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=10)
        victim, mate = client.call(["피해자"]), client.call(["옆자리"])
        payloads = [*victim.payloads(now_ms()), *mate.payloads(now_ms())]  # built now: their ids known
        admin.set(keys.reply(victim.requests[0].id), "a stray string")
        admin.rpush(keys.queue, *payloads)
        admin.rpush(keys.wake, 1)
        np.testing.assert_allclose(client.wait(mate)[0], fake_vector("query", "옆자리"), rtol=1e-6)
        wait_until(lambda: admin.llen(keys.dead) == 1, 5, "the dead letter")
        letter = msgpack.unpackb(admin.lindex(keys.dead, 0), raw=False)
        assert letter["code"] == "reply_undeliverable" and "WRONGTYPE" in letter["reason"]
        assert client.embed_query("계속 되나요?")  # and the worker keeps serving
        assert worker.alive
    finally:
        assert worker.terminate() == 0, worker.log()


def test_a_stray_value_at_the_workers_key_does_not_stop_serving(server: RedisServer) -> None:
    queue = "stray:requests"
    admin = server.client()
    admin.rpush(Keys(queue).workers, "not a set")
    worker = worker_for(server, queue, wait_ready=False)  # it cannot register: no heartbeat to wait for
    try:
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=60)  # the wait for it to start
        assert len(client.embed(["여전히 답해요", "둘"])) == 2
        wait_until(lambda: "holds a value of another type" in worker.log(), 5, "the advice in the log")
        assert worker.alive
    finally:
        assert worker.terminate() == 0, worker.log()


# --- 3. one clock: Redis's ------------------------------------------------------------------------

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None or LIBFAKETIME is None,
    reason="faketime is not installed (Debian faketime)",
)


def skewed(offset: str) -> list[str]:
    """A command prefix running a process on a clock shifted by ``offset`` (libfaketime, same pid)."""
    return ["env", f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME={offset}"]


PRODUCER_SCRIPT = """
import sys
from embedq import EmbeddingClient
client = EmbeddingClient.from_url(sys.argv[1], queue=sys.argv[2], timeout=5)
ok = sum(1 for i in range(10) if len(client.embed_query(f"시계 {i}")) == 8)
print(ok)
"""


@needs_faketime
def test_a_producer_whose_clock_is_behind_gets_every_answer(server: RedisServer) -> None:
    queue = "skew-producer:requests"
    worker = worker_for(server, queue)
    try:
        out = subprocess.run(
            [*skewed("-5s"), sys.executable, "-c", PRODUCER_SCRIPT, server.url, queue],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == "10"
    finally:
        assert worker.terminate() == 0, worker.log()


SHIFTED_CLOCK = """
import time
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + {offset}
time.time_ns = lambda: _time_ns() + int({offset} * 1e9)
"""


def test_a_worker_whose_clock_is_ahead_drops_nothing(server: RedisServer, tmp_path: Path) -> None:
    # libfaketime breaks the worker's threads (its sleeps fail with EINVAL), so the worker's
    # Python clock is shifted instead: time.time() is what a worker would compare deadlines with
    (tmp_path / "sitecustomize.py").write_text(SHIFTED_CLOCK.format(offset=6.0))
    queue = "skew-worker:requests"
    ahead = worker_for(server, queue, EMBED_WORKER_ID="ahead", PYTHONPATH=str(tmp_path))
    assert "worker ahead ready" in ahead.log()
    normal = worker_for(server, queue, EMBED_WORKER_ID="normal")
    try:
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=5)
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda i: client.embed_query(f"요청 {i}"), range(300)))
        assert len(results) == 300
        fresh_heartbeats(server.client(), Keys(queue), workers=2)
        counts = {w: info.counts for w, info in live_workers(server.client(), Keys(queue)).items()}
        assert counts["ahead"].get("ok", 0) > 0, counts  # the skewed worker did serve
        clock = subprocess.run(
            [sys.executable, "-c", "import time; print(time.time())"],
            env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert float(clock.stdout) - time.time() > 5  # and its clock was ahead
        assert sum(c.get("expired", 0) + c.get("late", 0) for c in counts.values()) == 0, counts
    finally:
        assert ahead.terminate() == 0, ahead.log()
        assert normal.terminate() == 0, normal.log()


# --- 4. the token window: cut as the model cuts and say so, or refuse -----------------------------


def test_long_texts_are_cut_like_the_model_and_reported(
    redis_server: RedisServer, in_process: ReferenceModel
) -> None:
    queue = "window:requests"
    worker = WorkerProcess(redis_server.url, queue)
    strict = WorkerProcess(redis_server.url, "window-strict:requests", {"EMBED_TRUNCATE": "false"})
    try:
        client = EmbeddingClient.from_url(redis_server.url, queue=queue, timeout=30)
        long_text = (
            "임베딩 모델은 긴 문서를 잘라서 처리합니다. " * 300
        )  # 7,500 characters, far over 256 tokens
        call = client.call([long_text, "짧은 질문"])
        client.send(call)
        vectors = client.wait(call)
        assert call.truncated == [0]
        assert cosines(vectors, in_process.encode([long_text, "짧은 질문"])).min() >= 0.99999
        with pytest.raises(EmbeddingError) as info:
            client.embed([long_text], truncate=False)
        assert info.value.code == "text_too_long"
        assert "window is 256 tokens" in info.value.message and "tokens;" in info.value.message
        strict_client = EmbeddingClient.from_url(redis_server.url, queue=strict.queue, timeout=30)
        with pytest.raises(EmbeddingError, match="text_too_long"):
            strict_client.embed_documents([long_text])
        assert len(strict_client.embed_documents([long_text], truncate=True)) == 1
        wait_until(
            lambda: any(
                w.counts.get("truncated", 0) >= 1
                for w in live_workers(redis_server.client(), Keys(queue)).values()
            ),
            5,
            "the truncated count in the heartbeat",
        )
    finally:
        assert worker.terminate() == 0, worker.log()
        assert strict.terminate() == 0, strict.log()


# --- 5, 9, 10. byte caps, echo caps, undecodable bodies ------------------------------------------


def blpop_reply(client: redis.Redis, keys: Keys, request_id: str, timeout: float = 10) -> dict:
    popped = client.blpop([keys.reply(request_id)], timeout=timeout)
    assert popped is not None, "no reply"
    return msgpack.unpackb(popped[1], raw=False)


def test_a_huge_request_costs_the_worker_almost_nothing_and_gets_an_error(server: RedisServer) -> None:
    queue = "huge:requests"
    worker = worker_for(server, queue)
    admin = server.client()
    keys = Keys(queue)
    try:
        before = worker.peak_rss_kib()
        rid = new_request_id()
        now = now_ms()
        head = {"v": 2, "id": rid, "kind": "query", "deadline_ms": now + 30_000, "sent_ms": now}
        huge = msgpack.packb({**head, "texts": ["가" * (35 * 1024 * 1024)]}, use_bin_type=True)  # ~100 MB
        assert len(huge) > 100_000_000
        admin.rpush(keys.queue, huge)
        admin.rpush(keys.wake, 1)
        del huge
        reply = blpop_reply(admin, keys, rid, timeout=30)
        assert reply["code"] == "request_too_large" and "EMBED_MAX_REQUEST_BYTES" in reply["message"]
        grown_mib = (worker.peak_rss_kib() - before) / 1024
        assert grown_mib < 20, f"the worker's peak RSS grew {grown_mib:.0f} MiB for a 100 MB request"
        letter = msgpack.unpackb(admin.lindex(keys.dead, 0), raw=False, unicode_errors="replace")
        assert letter["code"] == "request_too_large" and letter["raw_size"] > 100_000_000
        assert len(admin.lindex(keys.dead, 0)) < 2048
        assert admin.llen(keys.processing(worker_id(admin, queue))) == 0
        assert worker.alive
    finally:
        assert worker.terminate() == 0, worker.log()


def test_fields_echoed_back_are_shortened(server: RedisServer) -> None:
    queue = "echo:requests"
    worker = worker_for(server, queue)
    admin = server.client()
    keys = Keys(queue)
    try:
        rid, now = new_request_id(), now_ms()
        body = {
            "v": 2,
            "id": rid,
            "kind": "k" * 200_000,
            "deadline_ms": now + 30_000,
            "sent_ms": now,
            "texts": ["a"],
        }
        admin.rpush(keys.queue, msgpack.packb(body, use_bin_type=True), msgpack.packb({"id": "i" * 200_000}))
        admin.rpush(keys.wake, 1)
        reply = blpop_reply(admin, keys, rid)
        assert reply["code"] == "invalid_kind" and len(reply["message"]) < 500
        wait_until(lambda: admin.llen(keys.dead) == 1, 5, "the dead letter of the id-less request")
        letter = msgpack.unpackb(admin.lindex(keys.dead, 0), raw=False)
        assert len(letter["reason"]) < 500 and len(letter["raw"]) <= 4096
        assert max(len(line) for line in worker.log().splitlines()) < 2000
    finally:
        assert worker.terminate() == 0, worker.log()


def test_a_request_that_does_not_decode_is_answered(server: RedisServer) -> None:
    queue = "undecodable:requests"
    worker = worker_for(server, queue)
    admin = server.client()
    keys = Keys(queue)
    try:
        good = make_request("정상 문장").pack()
        bad_utf8 = make_request("깨진 문장")
        raw = bad_utf8.pack().replace("깨진 문장".encode(), b"\xff\xfe" + "진 문장".encode()[:-2])
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=10)
        call = client.call(["옆 요청"])
        admin.rpush(keys.queue, raw, good, *call.payloads(now_ms()))
        admin.rpush(keys.wake, 1)
        reply = blpop_reply(admin, keys, bad_utf8.id)
        assert reply["code"] == "invalid_msgpack" and "UTF-8" in reply["message"]
        assert len(client.wait(call)) == 1
        assert worker.alive
    finally:
        assert worker.terminate() == 0, worker.log()


# --- 6. failover within the default timeout -------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_one_of_two_workers_under_load_loses_no_call(server: RedisServer) -> None:
    queue = "failover:requests"
    env = {"EMBED_TEST_ENCODE_DELAY": "0.02"}  # defaults otherwise: heartbeat TTL, reap interval
    victim = worker_for(server, queue, EMBED_WORKER_ID="victim", **env)
    survivor = worker_for(server, queue, EMBED_WORKER_ID="survivor", **env)
    client = EmbeddingClient.from_url(server.url, queue=queue)  # default timeout: 5 s
    stop = threading.Event()
    outcomes: list[str] = []
    finished = [0] * 10
    """Calls each producer has completed."""

    def producer(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                client.embed_query(f"producer {n} question {i}")
                outcomes.append("ok")
            except EmbedqError as exc:
                outcomes.append(type(exc).__name__)
            finished[n] += 1
            i += 1

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(10)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: outcomes.count("ok") > 100, 20, "traffic through both workers")
        admin = server.client()
        wait_until(
            lambda: admin.llen(Keys(queue).processing("victim")) > 0, 10, "the victim to hold requests"
        )
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(5)
        killed_at, at_kill = len(outcomes), list(finished)
        # every call in flight at the kill has ended (+1), and each producer's next one too (+2):
        # a call the kill had stranded would have timed out (5 s) before that
        wait_until(
            lambda: (
                all(f >= k + 2 for f, k in zip(finished, at_kill, strict=True))
                and outcomes[killed_at:].count("ok") > 100
            ),
            30,
            "every producer past the kill, and traffic after it",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert outcomes[killed_at:].count("ok") > 100
    assert [o for o in outcomes if o != "ok"] == [], "calls failed around the kill"
    assert "worker victim is gone: put" in survivor.log(), survivor.log()
    assert survivor.terminate() == 0, survivor.log()


# --- 7. an evicting Redis is named ------------------------------------------------------------------


def test_an_evicting_redis_is_warned_about(server: RedisServer) -> None:
    queue = "evicting:requests"
    server.client().config_set("maxmemory-policy", "allkeys-lru")
    worker = worker_for(server, queue)
    try:
        assert "maxmemory-policy allkeys-lru" in worker.log() and "noeviction" in worker.log()
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "embedq.cli",
                "status",
                "--redis-url",
                server.url,
                "--queue",
                queue,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert "WARNING" in status.stdout and "noeviction" in status.stdout, status.stdout
    finally:
        assert worker.terminate() == 0, worker.log()


# --- 8. overload: no encode for a producer that cannot get its answer in time -------------------------


def test_under_overload_requests_that_cannot_make_their_deadline_are_not_encoded(server: RedisServer) -> None:
    queue = "overload:requests"
    worker = worker_for(server, queue, EMBED_TEST_ENCODE_DELAY="0.1", EMBED_MAX_BATCH="2")
    try:
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=0.5)
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(lambda i: _outcome(client, f"과부하 {i}"), range(200)))
        assert outcomes.count("ok") > 0
        assert "deadline_exceeded" in outcomes, outcomes  # told why, not left to time out
        wait_until(lambda: server.client().llen(queue) == 0, 10, "the queue to drain")
        fresh_heartbeats(server.client(), Keys(queue))  # its counts include every request
        info = next(iter(live_workers(server.client(), Keys(queue)).values()))
        counts = info.counts
        wasted = counts.get("late_texts", 0)
        assert wasted <= 0.1 * counts["texts"], counts
        assert counts.get("late", 0) + counts.get("expired", 0) > 0, counts
    finally:
        assert worker.terminate() == 0, worker.log()


def _outcome(client: EmbeddingClient, text: str) -> str:
    try:
        client.embed_query(text)
        return "ok"
    except EmbeddingTimeout as exc:
        return "deadline_exceeded" if "gave up on it" in str(exc) else "timeout"


# --- 13. a reply is tied to its request ---------------------------------------------------------------


def test_two_producers_reusing_an_id_never_swap_vectors(server: RedisServer) -> None:
    queue = "same-id:requests"
    worker = worker_for(server, queue, EMBED_BATCH_WAIT_MS="0")
    try:
        client = EmbeddingClient.from_url(server.url, queue=queue, timeout=5)
        mine, theirs = client.call(["내 질문"]), client.call(["남의 질문"])
        (my_request,) = mine.payloads(now_ms())
        body = msgpack.unpackb(theirs.payloads(now_ms())[0])
        body["id"] = mine.requests[0].id  # another producer that picked the same id
        admin = server.client()
        admin.rpush(client.keys.queue, msgpack.packb(body), my_request)  # both answered on one key:
        admin.rpush(client.keys.wake, 1)  # the first reply there is theirs
        with pytest.raises(EmbeddingError, match="other texts than this request"):
            client.wait(mine)
    finally:
        assert worker.terminate() == 0, worker.log()


# --- 12. Redis write access is not code execution on the bulk host --------------------------------


def test_the_bulk_worker_runs_only_embedqs_job(server: RedisServer, tmp_path: Path) -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from embedq.bulk import BulkOptions
    from embedq.bulk.rq_worker import JOB_FUNCTION

    queue = "bulk-only:requests"
    worker = worker_for(server, queue)
    marker = tmp_path / "pwned"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(f'{{"id": {i}, "text": "문서 {i}"}}\n' for i in range(5)))
    rq = Queue("embed-bulk", connection=server.client(), serializer=JSONSerializer)
    try:
        evil = rq.enqueue("os.system", args=(f"touch {marker}",))
        sneaky = rq.enqueue(
            JOB_FUNCTION,
            args=(str(docs), str(tmp_path / "x"), BulkOptions(queue=queue).to_json()),
            on_success="os.getcwd",
        )
        legacy = rq.enqueue(  # a job stored before the embedq import name
            "producer.bulk.job.embed_file",
            args=(str(docs), str(tmp_path / "out"), BulkOptions(queue=queue).to_json()),
        )
        previous = rq.enqueue(  # a job stored before the bulk package was split
            "embedq.bulk.job.embed_file",
            args=(str(docs), str(tmp_path / "out2"), BulkOptions(queue=queue).to_json()),
        )
        ran = subprocess.run(
            [sys.executable, "-m", "embedq.cli", "bulk", "worker", "--burst",
             "--redis-url", server.url],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert not marker.exists(), "the bulk worker ran os.system"
        for job in (evil, sneaky):
            job.refresh()
            assert job.get_status() == "failed"
            assert "refused" in (job.exc_info or ""), job.exc_info
        for job in (legacy, previous):
            job.refresh()
            assert job.get_status() == "finished", job.exc_info
        assert np.load(tmp_path / "out" / "vectors.npy").shape == (5, 8)
        assert np.array_equal(
            np.load(tmp_path / "out2" / "vectors.npy"), np.load(tmp_path / "out" / "vectors.npy")
        )
    finally:
        assert worker.terminate() == 0, worker.log()


# --- a call of any length works at the default timeout ------------------------------------------------


@pytest.mark.slow
def test_embed_documents_of_5000_texts_at_default_settings(server: RedisServer) -> None:
    from embedq import EmbedqEmbeddings

    queue = "long-call:requests"
    worker = worker_for(server, queue, EMBED_TEST_ENCODE_DELAY="0.015")  # ~9 s for 5,000 texts: past 5 s
    try:
        embeddings = EmbedqEmbeddings(server.url, queue=queue)  # default timeout, 5 s
        texts = [f"문서 {i}" for i in range(5000)]
        started = time.monotonic()
        vectors = embeddings.embed_documents(texts)
        took = time.monotonic() - started
        assert took > 5.0  # longer than the timeout, and no EmbeddingTimeout
        assert len(vectors) == 5000
        np.testing.assert_allclose(vectors[4321], fake_vector("passage", "문서 4321"), rtol=1e-6)
        assert server.client().llen(Keys(queue).queue) == 0
    finally:
        assert worker.terminate() == 0, worker.log()


def test_a_stalled_long_call_says_what_was_answered(server: RedisServer) -> None:
    queue = "stalled:requests"
    worker = worker_for(server, queue, EMBED_TEST_ENCODE_DELAY="0.01")
    client = EmbeddingClient.from_url(server.url, queue=queue, timeout=1.5)
    call = client.call([f"문서 {i}" for i in range(400)], "passage")
    client.send(call, limit=40)  # forty one-text requests (before any reply priced a text)
    admin = server.client()
    wait_until(lambda: sum(admin.exists(k) for k in call.pending_keys()) >= 8, 10, "some answers")
    worker.proc.send_signal(signal.SIGSTOP)  # the worker hangs
    try:
        pattern = r"\d+ of \d+ requests sent were answered, then none for 1.5s"
        with pytest.raises(EmbeddingTimeout, match=pattern):
            client.wait(call)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        assert worker.terminate() == 0, worker.log()
