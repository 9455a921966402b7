"""Redis ACL users made from ``embedq acl`` (Redis 7 selectors): every role runs under its own
rules through a reap, an encode failure, a dead letter, a bulk job and a Redis restart, and a
producer can neither read another's request nor forge a reply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from embedq import EmbeddingClient, EmbeddingError
from embedq.acl import AclRules
from embedq.protocol import Keys
from tests.support.fake_encoder import POISON, fake_vector
from tests.support.servers import ROOT, RedisServer, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

QUEUE = "acl-embed:requests"
KEYS = Keys(QUEUE)
USERS = {"worker": "w-secret", "producer": "p-secret", "bulk": "b-secret", "status": "s-secret"}
FAKE = {
    "EMBED_ENCODER": "tests.support.fake_encoder:build",
    "EMBED_TEST_DIM": "8",
    "EMBED_MAX_ATTEMPTS": "2",
}


def create_users(server: RedisServer) -> None:
    admin = server.client()
    for role, password in USERS.items():
        admin.execute_command(
            "ACL", "SETUSER", role, "reset", "on", f">{password}", *AclRules(role, QUEUE).rules()
        )


def url(server: RedisServer, role: str) -> str:
    return server.url.replace("redis://", f"redis://{role}:{USERS[role]}@")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    create_users(s)
    yield s
    s.stop()


def test_the_printed_command_is_the_rules(server: RedisServer) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "embedq.cli", "acl", "--role", "producer", "--user", "chatbot",
         "--password", "pw", "--queue", QUEUE],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    line = out.stdout.strip()
    assert line.startswith("ACL SETUSER chatbot reset on '>pw'")
    assert "'(+rpush %W~acl-embed:requests %W~acl-embed:bulk %W~acl-embed:wake)'" in line
    # redis-cli reads the shell-quoted words as the same rules
    result = subprocess.run(
        ["sh", "-c", f"redis-cli -p {server.port} {line}"], capture_output=True, text=True
    )
    assert result.stdout.strip() == "OK", result
    assert "%W~acl-embed:requests" in " ".join(server.client().acl_getuser("chatbot")["selectors"][1])


def test_every_role_works_under_its_own_rules(server: RedisServer, tmp_path: Path) -> None:
    env = {**FAKE, "EMBED_TEST_ENCODE_DELAY": "0.3"}
    a = WorkerProcess(url(server, "worker"), QUEUE, {**env, "EMBED_WORKER_ID": "acl-a"})
    b = WorkerProcess(url(server, "worker"), QUEUE, {**env, "EMBED_WORKER_ID": "acl-b"})
    admin = server.client()
    try:
        client = EmbeddingClient.from_url(url(server, "producer"), queue=QUEUE, timeout=15)
        texts = [f"질문 {i}" for i in range(10)]
        np.testing.assert_allclose(
            client.embed(texts), np.stack([fake_vector("query", t) for t in texts]), rtol=1e-6
        )

        # a reap: kill one worker while it holds requests; the other puts them back and answers
        calls = [client.call([f"재분배 {i}"]) for i in range(20)]  # more than one batch: both take some
        client.send(*calls)
        wait_until(lambda: admin.llen(KEYS.processing("acl-a")) > 0, 10, "acl-a to hold requests")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)
        for call in calls:
            assert client.wait(call).shape == (1, 8)
        assert "worker acl-a is gone" in b.log(), b.log()

        # an encode failure, its attempts counted, then a dead letter with an error reply
        with pytest.raises(EmbeddingError, match="encode_failed"):
            client.embed([f"{POISON} 문장"])
        # an unanswerable request (no id): a dead letter
        admin.rpush(KEYS.queue, b"not msgpack at all")
        admin.rpush(KEYS.wake, 1)
        wait_until(lambda: admin.llen(KEYS.dead) >= 2, 10, "two dead letters")

        # a Redis restart: users and data gone until the operator's ACL comes back
        server.kill()
        server.start()
        create_users(server)
        assert client.embed_query("다시 시작") is not None
        assert b.alive
        log = b.log()
        assert "NOPERM" not in log, log

        # a bulk job, submitted and run under the bulk user
        docs = tmp_path / "docs.jsonl"
        docs.write_text("".join(json.dumps({"id": i, "text": f"문서 {i}"}) + "\n" for i in range(30)))
        run_env = {**os.environ, "REDIS_URL": url(server, "bulk")}
        embedq = [sys.executable, "-m", "embedq.cli", "bulk"]
        submitted = subprocess.run(
            [*embedq, "submit", str(docs), str(tmp_path / "out"), "--queue", QUEUE],
            capture_output=True, text=True, env=run_env, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        ran = subprocess.run(
            [*embedq, "worker", "--burst"], capture_output=True, text=True, env=run_env, cwd=ROOT, timeout=120
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        vectors = np.load(tmp_path / "out" / "vectors.npy")
        assert vectors.shape == (30, 8)
        np.testing.assert_allclose(vectors[3], fake_vector("passage", "문서 3"), rtol=1e-6)
    finally:
        a.kill()
        assert b.terminate() == 0, b.log()


def test_a_producer_cannot_read_requests_forge_replies_or_touch_worker_keys(server: RedisServer) -> None:
    admin = server.client()
    victim_id = "0" * 32
    admin.rpush(KEYS.queue, b"someone else's question")
    admin.rpush(KEYS.processing("w1"), b"a request being encoded")
    producer = redis.Redis.from_url(url(server, "producer"))
    denied = [
        lambda: producer.lrange(KEYS.queue, 0, -1),  # read other users' questions
        lambda: producer.lpop(KEYS.queue),
        lambda: producer.lindex(KEYS.queue, 0),
        lambda: producer.rpush(KEYS.reply(victim_id), b"forged vectors"),  # forge a reply
        lambda: producer.lpop(KEYS.processing("w1")),  # pop a worker's processing list
        lambda: producer.rpush(KEYS.reaping("w1"), b"x"),  # block the reaper
        lambda: producer.rpush(KEYS.workers, b"x"),  # break worker registration
        lambda: producer.set(KEYS.heartbeat("w1"), b"fake"),
        lambda: producer.delete(KEYS.queue),
        lambda: producer.keys("*"),
        lambda: producer.flushall(),
        lambda: producer.get("other-app:secret"),
        lambda: producer.set(KEYS.cache_entry("fp", "query", "q"), b"poisoned vector"),  # poison the cache
        lambda: producer.hincrby(f"{KEYS.namespace}:cache:stats", "hits", 1000),  # fake a hit ratio
        lambda: producer.scan(0),  # list keys, and so find others' reply keys
        lambda: producer.randomkey(),
        lambda: producer.client_kill_filter(_type="normal"),
        lambda: producer.client_list(),
    ]
    for attempt in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # a script runs under the same rules: EVAL cannot read the queue either
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        producer.eval("return redis.call('LRANGE', KEYS[1], 0, -1)", 2, KEYS.queue, KEYS.wake)
    assert admin.lrange(KEYS.queue, 0, -1) == [b"someone else's question"]
    assert admin.llen(KEYS.processing("w1")) == 1
    # what a producer needs still works: push, queue depth, pop and delete its own reply key
    assert producer.llen(KEYS.queue) == 1
    assert producer.blpop([KEYS.reply(victim_id)], timeout=0.1) is None
    producer.delete(KEYS.reply(victim_id))
    # and the query cache: look entries up
    admin.set(KEYS.cache_entry("fp", "query", "q"), b"entry")
    assert producer.mget([KEYS.cache_entry("fp", "query", "q")]) == [b"entry"]


def test_a_bulk_user_cannot_list_keys_steal_replies_kill_connections_or_drop_scripts(
    server: RedisServer,
) -> None:
    """The attacks a bulk user (RQ's broad rules on its own keys) made before: SCAN found another
    producer's reply key and LPOP took the vector; CLIENT KILL dropped every user's connections."""
    admin = server.client()
    victim = redis.Redis.from_url(url(server, "producer"))
    victim.ping()
    admin.rpush(KEYS.reply("1" * 32), b"the victim's vectors")
    admin.set("other-app:secret", b"x")
    bulk = redis.Redis.from_url(url(server, "bulk"))
    denied = [
        lambda: bulk.scan(0),
        lambda: bulk.scan(0, match=f"{KEYS.namespace}:reply:*"),
        lambda: bulk.keys("*"),
        lambda: bulk.randomkey(),
        lambda: bulk.client_kill_filter(_type="normal"),
        lambda: bulk.client_list(),
        lambda: bulk.script_flush(),
        lambda: bulk.execute_command("FUNCTION", "FLUSH"),
        lambda: bulk.hincrby(f"{KEYS.namespace}:cache:stats", "hits", 1000),
        lambda: bulk.set(KEYS.cache_entry("fp", "query", "q"), b"poisoned vector"),
        lambda: bulk.lrange(KEYS.queue, 0, -1),
        lambda: bulk.get("other-app:secret"),
        lambda: bulk.flushall(),
        lambda: bulk.config_get("*"),
    ]
    for attempt in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert victim.ping()  # its connection survived
    assert admin.lrange(KEYS.reply("1" * 32), 0, -1) == [b"the victim's vectors"]
    # what RQ needs still works on its own keys
    bulk.set("rq:probe", b"1")
    assert bulk.get("rq:probe") == b"1"


def test_the_status_role_reads_what_embedq_status_needs_and_writes_nothing(server: RedisServer) -> None:
    worker = WorkerProcess(url(server, "worker"), QUEUE, FAKE)
    try:
        status = subprocess.run(
            [sys.executable, "-m", "embedq.cli", "status", "--redis-url", url(server, "status"),
             "--queue", QUEUE],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "1 live worker(s)" in status.stdout, status.stdout
        assert USERS["status"] not in status.stdout + status.stderr
        reader = redis.Redis.from_url(url(server, "status"))
        denied = [
            lambda: reader.rpush(KEYS.queue, b"x"),
            lambda: reader.lpop(KEYS.queue),
            lambda: reader.lrange(KEYS.queue, 0, -1),  # the questions themselves are not status
            lambda: reader.set(KEYS.heartbeat("w1"), b"fake"),
            lambda: reader.delete(KEYS.workers),
            lambda: reader.scan(0),
            lambda: reader.evalsha("0" * 40, 0),
            lambda: reader.client_kill_filter(_type="normal"),
        ]
        for attempt in denied:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        assert worker.terminate() == 0, worker.log()
