"""Redis ACL users in REDIS_URL: a worker and a producer each with only the commands and keys
the README lists for them (Redis 6+)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from embedq import EmbeddingClient
from tests.support.fake_encoder import fake_vector
from tests.support.servers import RedisServer, WorkerProcess

NAMESPACE = "acl-embed"
WORKER_COMMANDS = (
    "+evalsha +eval +script|load +blmove +lmove +lpush +rpush +lrange +ltrim +lrem +lindex +llen "
    "+expire +incr +del +set +get +mget +exists +sadd +srem +smembers +multi +exec +ping"
)
PRODUCER_COMMANDS = "+evalsha +eval +script|load +rpush +llen +blpop +ping"
"""The README's ACL rules, word for word."""


@pytest.fixture
def acl_server() -> RedisServer:
    server = RedisServer()
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "embedq-worker", "on", ">worker-secret", f"~{NAMESPACE}:*",
                          "resetchannels", *WORKER_COMMANDS.split())  # fmt: skip
    admin.execute_command("ACL", "SETUSER", "chatbot", "on", ">chatbot-secret", f"~{NAMESPACE}:*",
                          "resetchannels", *PRODUCER_COMMANDS.split())  # fmt: skip
    yield server
    server.stop()


def test_worker_and_producer_run_as_restricted_acl_users(acl_server: RedisServer) -> None:
    host = acl_server.url.removeprefix("redis://")
    worker = WorkerProcess(
        f"redis://embedq-worker:worker-secret@{host}",
        f"{NAMESPACE}:requests",
        {
            "EMBED_ENCODER": "tests.support.fake_encoder:build",
            "EMBED_TEST_DIM": "8",
            "EMBED_REAP_INTERVAL": "0.5",
        },
    )
    try:
        client = EmbeddingClient.from_url(
            f"redis://chatbot:chatbot-secret@{host}", queue=f"{NAMESPACE}:requests", timeout=10
        )
        texts = [f"질문 {i}" for i in range(10)]
        np.testing.assert_allclose(
            client.embed(texts), np.stack([fake_vector("query", t) for t in texts]), rtol=1e-6
        )
        restricted = redis.Redis.from_url(f"redis://chatbot:chatbot-secret@{host}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            restricted.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            restricted.get("other-app:secret")
        assert "NOPERM" not in worker.log() and "ERROR" not in worker.log(), worker.log()
    finally:
        assert worker.terminate() == 0, worker.log()
