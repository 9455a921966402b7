"""Nothing lost: killed workers, restarted workers, a restarted Redis, poison requests, expired
requests, a full queue, SIGTERM mid-batch and fuzzed input, with real processes throughout."""

from __future__ import annotations

import random
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

from embedq import (
    EmbeddingClient,
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingTimeout,
    QueueFull,
)
from embedq.protocol import Keys, new_request_id
from embedq.workers import live_workers
from tests.support.heartbeats import fresh_heartbeats
from tests.support.requests import make_request, now_ms
from tests.support.servers import RedisServer, WorkerProcess, wait_until
from tests.support.vectors import RECORD_QUERIES, ReferenceModel, cosines

pytestmark = pytest.mark.slow

FAST_REAPING = {"EMBED_HEARTBEAT_TTL": "1.5", "EMBED_REAP_INTERVAL": "0.5"}
SLOW = {"EMBED_ENCODER": "tests.support.faulty_encoder:build", "EMBED_TEST_ENCODE_DELAY": "3"}


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; whatever is still running at the end is killed."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def leftovers(r, keys: Keys) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Processing lists that still hold something."""
    return {k.decode(): r.llen(k) for k in r.scan_iter(match=f"{keys.namespace}:processing:*") if r.llen(k)}


def test_killed_worker_holding_a_batch_is_covered_by_another(
    redis_server: RedisServer, workers: list[WorkerProcess], in_process: ReferenceModel
) -> None:
    keys = Keys("kill9:requests")
    r = redis_server.client()
    doomed = WorkerProcess(
        redis_server.url, keys.queue, {**SLOW, **FAST_REAPING, "EMBED_WORKER_ID": "doomed"}
    )
    workers.append(doomed)
    client = EmbeddingClient.from_url(redis_server.url, queue=keys.queue, timeout=60)
    calls = [client.call([q]) for q in RECORD_QUERIES]
    client.send(*calls)
    wait_until(lambda: r.llen(keys.processing("doomed")) == 5, 10, "the doomed worker to take the batch")
    doomed.kill()  # SIGKILL, mid-encode
    rescuer = WorkerProcess(redis_server.url, keys.queue, {**FAST_REAPING, "EMBED_WORKER_ID": "rescuer"})
    workers.append(rescuer)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(client.wait, calls))
    got = np.vstack(results)
    assert cosines(got, in_process.encode(RECORD_QUERIES)).min() >= 0.99999
    assert {c.replies[0].worker for c in calls if c.replies[0]} == {"rescuer"}
    # a barrier: the rescuer serves in order, so once a later request is answered any second
    # answer to the first five would have been written
    client.embed(["뒤따르는 질문"])
    assert all(r.llen(keys.reply(c.requests[0].id)) == 0 for c in calls), "a producer got two answers"
    assert leftovers(r, keys) == {}
    assert not r.sismember(keys.workers, "doomed")
    assert "worker doomed is gone: put 5 request(s) back" in rescuer.log()


@pytest.mark.slow
def test_thousand_requests_survive_three_worker_crashes(
    redis_server: RedisServer, workers: list[WorkerProcess], in_process: ReferenceModel
) -> None:
    keys = Keys("crashes:requests")
    r = redis_server.client()
    steady = WorkerProcess(redis_server.url, keys.queue, {**FAST_REAPING, "EMBED_WORKER_ID": "steady"})
    workers.append(steady)
    client = EmbeddingClient.from_url(redis_server.url, queue=keys.queue, timeout=120)
    texts = [f"{RECORD_QUERIES[i % 5]} #{i}" for i in range(1000)]
    results: dict[int, np.ndarray] = {}
    done = threading.Event()

    def producer(p: int) -> None:
        for i in range(p, 1000, 20):
            results[i] = client.embed([texts[i]])[0]

    rng = random.Random(20261128)  # the same kill times on every run

    def chaos() -> None:
        for n in range(3):
            victim = WorkerProcess(
                redis_server.url, keys.queue, {**FAST_REAPING, "EMBED_WORKER_ID": f"victim-{n}"}
            )
            workers.append(victim)
            time.sleep(rng.uniform(0.5, 1.5))
            victim.kill()
            if done.is_set():
                break

    with ThreadPoolExecutor(21) as pool:
        crashes = pool.submit(chaos)
        for f in [pool.submit(producer, p) for p in range(20)]:
            f.result()
        done.set()
        crashes.result()
    assert len(results) == 1000
    got = np.vstack([results[i] for i in range(1000)])
    assert cosines(got, in_process.encode(texts)).min() >= 0.99999
    wait_until(lambda: leftovers(r, keys) == {}, 10, "the dead workers' lists to be reaped")
    assert steady.alive


def test_redis_restart_under_load(
    redis_server_restartable: RedisServer, workers: list[WorkerProcess]
) -> None:
    server = redis_server_restartable
    keys = Keys("restart:requests")
    worker = WorkerProcess(server.url, keys.queue)
    workers.append(worker)
    timeout = 3.0
    client = EmbeddingClient.from_url(server.url, queue=keys.queue, timeout=timeout)
    outcomes: list[tuple[str, float]] = []
    stop = threading.Event()

    def producer() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.embed_query("재시작 중에도 질문")
                outcome = "ok"
            except (EmbeddingTimeout, EmbeddingConnectionError) as exc:
                assert str(exc)
                outcome = type(exc).__name__
            outcomes.append((outcome, time.monotonic() - started))
            if outcome != "ok":
                time.sleep(0.1)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: [o for o, _ in outcomes].count("ok") >= 5, 20, "traffic before the outage")
    server.kill()
    wait_until(lambda: any(o != "ok" for o, _ in outcomes), 20, "producers to see the outage")
    server.start()
    back = time.monotonic()
    after = EmbeddingClient.from_url(server.url, queue=keys.queue, timeout=10)
    after.embed_query("다시 살아났나요?")
    recovered_in = time.monotonic() - back
    seen = len(outcomes)
    wait_until(lambda: [o for o, _ in outcomes[seen:]].count("ok") >= 5, 20, "traffic after the restart")
    stop.set()
    for t in threads:
        t.join(timeout + 5)
    assert recovered_in < 5.0
    kinds = {o for o, _ in outcomes}
    assert kinds <= {"ok", "EmbeddingTimeout", "EmbeddingConnectionError"}
    assert "ok" in kinds
    assert max(d for _, d in outcomes) < timeout + 1.5, "a call hung past its timeout"
    # requests sent after the restart all succeed
    assert [len(after.embed_query(f"질문 {i}")) for i in range(10)] == [384] * 10
    log = worker.log()
    # the loop and the heartbeat thread each log the outage once, not each attempt
    assert log.count("Redis error while serving") == 1, log
    assert log.count("Redis error while writing the heartbeat") <= 1, log
    assert log.count("Redis answers again") >= 1, log
    assert worker.alive


def test_poison_request_is_dead_lettered_after_its_attempts(
    redis_server: RedisServer, faulty_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    from tests.support.fake_encoder import POISON

    keys = Keys(faulty_worker.queue)
    r = redis_server.client()
    r.delete(keys.dead)
    client = EmbeddingClient.from_url(redis_server.url, queue=keys.queue, timeout=30)
    before, poison, after = (
        client.call(RECORD_QUERIES[:2]),
        client.call([f"{POISON}!"]),
        client.call(RECORD_QUERIES[2:]),
    )
    client.send(before, poison, after)
    with pytest.raises(EmbeddingError, match="gave up after 3 attempts") as info:
        client.wait(poison)
    assert info.value.code == "encode_failed"
    assert cosines(client.wait(before), in_process.encode(RECORD_QUERIES[:2])).min() >= 0.99999
    assert cosines(client.wait(after), in_process.encode(RECORD_QUERIES[2:])).min() >= 0.99999
    dead = [msgpack.unpackb(d) for d in r.lrange(keys.dead, 0, -1)]
    assert [(d["id"], d["code"]) for d in dead] == [(poison.requests[0].id, "encode_failed")]
    assert faulty_worker.alive


def test_expired_requests_are_skipped_and_counted(
    redis_server: RedisServer, default_worker: WorkerProcess
) -> None:
    keys = Keys(default_worker.queue)
    r = redis_server.client()

    def expired_count() -> int:
        info = live_workers(r, keys)
        return sum(int(w.counts.get("expired", 0)) for w in info.values())

    def texts_count() -> int:
        return sum(int(w.counts.get("texts", 0)) for w in live_workers(r, keys).values())

    wait_until(lambda: live_workers(r, keys), 5, "a heartbeat")
    fresh_heartbeats(r, keys)  # the counts include earlier tests' traffic
    expired_before, texts_before = expired_count(), texts_count()
    stale = [make_request("늦었어요", timeout=-1) for _ in range(3)]
    client = EmbeddingClient.from_url(redis_server.url, queue=keys.queue, timeout=10)
    fresh = client.call(["제때 왔어요"])
    r.rpush(keys.queue, *(s.pack() for s in stale))
    client.send(fresh)
    client.wait(fresh)
    wait_until(
        lambda: expired_count() == expired_before + 3 and texts_count() > texts_before,
        5,
        "the counts in the heartbeat",
    )
    fresh_heartbeats(r, keys)  # and one more: nothing else comes
    assert texts_count() == texts_before + 1  # only the fresh text was encoded
    assert expired_count() == expired_before + 3
    assert all(not r.exists(keys.reply(s.id)) for s in stale)


def test_queue_full_is_raised_at_once(redis_server: RedisServer) -> None:
    client = EmbeddingClient.from_url(redis_server.url, queue="full:requests", timeout=5, max_queue=50)
    client.send(*(client.call(["x"]) for _ in range(50)))
    started = time.monotonic()
    with pytest.raises(QueueFull, match="holds 50 requests, at its cap of 50"):
        client.embed_query("one more")
    assert time.monotonic() - started < 0.5
    redis_server.client().delete("full:requests")


def test_sigterm_during_a_batch_answers_it_and_exits_zero(
    redis_server: RedisServer, workers: list[WorkerProcess], in_process: ReferenceModel
) -> None:
    keys = Keys("sigterm:requests")
    r = redis_server.client()
    worker = WorkerProcess(
        redis_server.url,
        keys.queue,
        {**SLOW, "EMBED_TEST_ENCODE_DELAY": "2", "EMBED_WORKER_ID": "leaving", "EMBED_BATCH_WAIT_MS": "0"},
    )
    workers.append(worker)
    client = EmbeddingClient.from_url(redis_server.url, queue=keys.queue, timeout=30)
    texts = [f"{RECORD_QUERIES[i % 5]} {i}" for i in range(8)]
    batch = [client.call([t]) for t in texts]  # a full batch: nothing sent later can join it
    client.send(*batch)
    wait_until(lambda: r.llen(keys.processing("leaving")) == 8, 10, "the batch to be taken")
    later = [client.call([f"나중 질문 {i}"]) for i in range(10)]
    client.send(*later)
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(15)
    assert code == 0, worker.log()
    assert time.monotonic() - started < 10
    got = np.vstack([client.wait(c) for c in batch])
    assert cosines(got, in_process.encode(texts)).min() >= 0.99999
    assert r.llen(keys.queue) == 10, worker.log()  # not started: still queued for the next worker
    assert leftovers(r, keys) == {}
    assert not r.sismember(keys.workers, "leaving")


def random_msgpack(rng: random.Random, depth: int = 0) -> object:
    choices = [
        lambda: rng.randint(-(2**40), 2**40),
        lambda: rng.random() * 1e6,
        lambda: "".join(chr(rng.randint(32, 0xD7FF)) for _ in range(rng.randint(0, 20))),
        lambda: rng.randbytes(rng.randint(0, 30)),
        lambda: None,
        lambda: rng.choice([True, False]),
    ]
    if depth < 3:
        choices += [
            lambda: [random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))],
            lambda: {
                rng.choice(["v", "id", "kind", "texts", "deadline", "x"]): random_msgpack(rng, depth + 1)
                for _ in range(rng.randint(0, 6))
            },
            lambda: {  # nearly valid: a real id, so the refusal must reach a reply key
                "v": rng.choice([1, 1, 2, "1"]),
                "id": new_request_id(),
                "kind": rng.choice(["query", "passage", "other", 3]),
                "texts": rng.choice([[], ["ok"], ["", "x"], [1, 2], "str", ["y" * 9000], ["z"] * 20]),
                "deadline": rng.choice([time.time() + 60, "later", None]),
            },
        ]
    return rng.choice(choices)()


def test_fuzzed_queue_does_not_hurt_valid_requests(
    redis_server: RedisServer, default_worker: WorkerProcess, in_process: ReferenceModel
) -> None:
    keys = Keys(default_worker.queue)
    r = redis_server.client()
    rng = random.Random(20261126)
    client = EmbeddingClient.from_url(redis_server.url, queue=keys.queue, timeout=120, max_queue=None)
    valid = [client.call([f"{RECORD_QUERIES[i % 5]} {i}"]) for i in range(200)]
    junk = [
        rng.randbytes(rng.randint(0, 64)) if i % 2 else msgpack.packb(random_msgpack(rng))
        for i in range(2000)
    ]
    stream: list[bytes] = []
    for i, call in enumerate(valid):
        stream.extend(junk[i * 10 : i * 10 + 10])
        stream.extend(call.payloads(now_ms()))
    r.rpush(keys.queue, *stream)
    got = np.vstack([client.wait(c) for c in valid])
    texts = [c.requests[0].texts[0] for c in valid]
    assert cosines(got, in_process.encode(texts)).min() >= 0.99999
    assert default_worker.alive
    assert r.llen(keys.dead) <= 1000
    wait_until(lambda: r.llen(keys.queue) == 0, 30, "the junk to be drained")
    assert leftovers(r, keys) == {}


def test_liveness_follows_the_workers_own_loop_not_redis(tmp_path: Path) -> None:
    """Issue 21, finding 6: the liveness probe ran `embedq-worker health`, which needs Redis, so a
    Redis outage past the probe's window restarted every worker at once. `health --live` reads
    the file the loop touches: a Redis outage keeps it fresh, a stopped loop lets it age."""
    server = RedisServer()
    alive = tmp_path / "alive"
    worker = WorkerProcess(
        server.url, "live:requests",
        {"EMBED_ENCODER": "tests.support.fake_encoder:build", "EMBED_ALIVE_FILE": str(alive)},
    )  # fmt: skip

    def health(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "embedq.worker", "health", "--redis-url", server.url, "--queue",
             "live:requests", "--alive-file", str(alive), *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    try:
        assert health("--live").returncode == 0
        server.kill()  # Redis gone: readiness fails, liveness does not
        time.sleep(4)
        ready = health("--any")
        assert ready.returncode == 1 and "cannot read heartbeats" in ready.stdout
        live = health("--live", "--max-age", "3")
        assert live.returncode == 0, live.stdout
        worker.proc.send_signal(signal.SIGSTOP)  # a loop that hangs
        time.sleep(4)
        stuck = health("--live", "--max-age", "3")
        assert stuck.returncode == 1 and "last turned" in stuck.stdout
        worker.proc.send_signal(signal.SIGCONT)
    finally:
        worker.kill()
        server.stop()
