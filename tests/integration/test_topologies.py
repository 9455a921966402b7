"""embedq on the Redis that production uses (issue 22), with real servers: TLS with a private CA
(producer, asyncio producer, worker, status, serve, bulk), a Sentinel-managed primary killed
under 10 producers, a failover that is not announced (the primary demoted, its address moved),
and a real 3-master Redis Cluster (the core on a hash-tagged queue; clear refusals otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from embedq import AsyncEmbeddingClient, EmbeddingClient, EmbedqError
from embedq.api import ApiSettings, create_app
from embedq.protocol import Keys
from embedq.tools.topologies import ClusterSet, MovableProxy, SentinelSet, TlsServer, start_server
from embedq.topology import SentinelUrl
from tests.support.fake_encoder import fake_vector
from tests.support.servers import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

FAKE = {
    "EMBED_ENCODER": "tests.support.fake_encoder:build",
    "EMBED_TEST_DIM": "8",
    "EMBED_HEARTBEAT_TTL": "2",
}
QUEUE = "topo:requests"


def embedq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedq.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.fixture
def tls() -> Iterator[TlsServer]:
    server = TlsServer()
    yield server
    server.stop()


async def test_every_client_works_over_tls_with_a_private_ca(tls: TlsServer, tmp_path: Path) -> None:
    worker = WorkerProcess(tls.url, QUEUE, FAKE)
    try:
        with EmbeddingClient.from_url(tls.url, queue=QUEUE) as client:
            np.testing.assert_allclose(client.embed(["안녕"]), [fake_vector("query", "안녕")], rtol=1e-6)
        async with AsyncEmbeddingClient.from_url(tls.url, queue=QUEUE) as aclient:
            assert (await aclient.embed(["비동기"])).shape == (1, 8)
        status = embedq("status", "--redis-url", tls.url, "--queue", QUEUE)
        assert status.returncode == 0 and "1 live worker(s)" in status.stdout, status.stderr
        with TestClient(create_app(ApiSettings(redis_url=tls.url, queue=QUEUE))) as api:
            assert api.post("/embed", json={"texts": ["http"]}).json()["dim"] == 8
        docs = tmp_path / "docs.jsonl"
        docs.write_text("".join(json.dumps({"id": i, "text": f"문서 {i}"}) + "\n" for i in range(20)))
        out = str(tmp_path / "out")
        bulk = embedq("bulk", "run", str(docs), out, "--redis-url", tls.url, "--queue", QUEUE, "--quiet")
        assert bulk.returncode == 0, bulk.stderr
        assert np.load(tmp_path / "out" / "vectors.npy").shape == (20, 8)
        # without the CA, the server's certificate is refused: no silent plaintext, no unverified TLS
        untrusted = tls.url.split("?")[0]
        with pytest.raises(EmbedqError, match="certificate verify failed"):
            EmbeddingClient.from_url(untrusted, queue=QUEUE, timeout=2).embed(["x"])
    finally:
        assert worker.terminate() == 0, worker.log()


def test_sentinel_urls_parse_and_say_what_is_wrong() -> None:
    spec = SentinelUrl.parse(
        "rediss+sentinel://app:p%40ss@s1:26379,[::1]:26380/embedq/2?sentinel_password=sp"
    )
    assert spec.sentinels == (("s1", 26379), ("::1", 26380)) and spec.service == "embedq" and spec.db == 2
    assert (spec.username, spec.password, spec.sentinel_password, spec.tls) == ("app", "p@ss", "sp", True)
    for bad, why in [
        ("redis+sentinel://s1:26379", "names the service"),
        ("redis+sentinel://s1/embedq", "is not host:port"),
        ("redis+sentinel://s1:26379/embedq?sentinal_password=x", "unknown Sentinel URL parameter"),
    ]:
        with pytest.raises(ValueError, match=why):
            SentinelUrl.parse(bad)


def call_continuously(url: str, stop: threading.Event, results: list[tuple[str, float]], n: int) -> None:
    """One producer: lone questions until ``stop``, each recorded as ("ok"|error, seconds)."""
    client = EmbeddingClient.from_url(url, queue=QUEUE, timeout=5)
    i = 0
    while not stop.is_set():
        started = time.monotonic()
        text = f"producer {n} question {i}"
        try:
            got = client.embed([text])
            ok = np.allclose(got[0], fake_vector("query", text), rtol=1e-6)
            results.append(("ok" if ok else "WRONG VECTOR", time.monotonic() - started))
        except EmbedqError as exc:
            results.append((type(exc).__name__, time.monotonic() - started))
        i += 1
        time.sleep(0.02)


def run_producers(url: str, during: float, event: object) -> list[tuple[str, float]]:
    stop = threading.Event()
    results: list[tuple[str, float]] = []
    threads = [threading.Thread(target=call_continuously, args=(url, stop, results, n)) for n in range(10)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    event()  # type: ignore[operator]
    time.sleep(during)
    stop.set()
    for t in threads:
        t.join(30)
    return results


def summarize(results: list[tuple[str, float]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for outcome, _ in results:
        out[outcome] = out.get(outcome, 0) + 1
    return out


def test_a_sentinel_primary_killed_under_10_producers_fails_over_by_itself() -> None:
    cluster = SentinelSet()
    worker = None
    try:
        worker = WorkerProcess(cluster.url, QUEUE, FAKE)
        old = cluster.primary_port()
        results = run_producers(cluster.url, 12.0, cluster.kill_primary)
        assert cluster.primary_port() != old  # the Sentinel promoted the replica
        counts = summarize(results)
        print(f"\nSentinel failover under 10 producers: {counts}, slowest {max(s for _, s in results):.1f} s")
        assert "WRONG VECTOR" not in counts
        assert max(seconds for _, seconds in results) < 5 + 1.5  # an answer or an error within the timeout
        late = [o for o, _ in results[-50:]]
        assert late.count("ok") == len(late), late  # after the failover, everything is answered again
        assert worker.alive
    finally:
        if worker is not None:
            worker.kill()
        cluster.stop()


def test_a_demoted_primary_behind_a_moved_address_is_left_for_the_new_one() -> None:
    """What managed Redis does: promote the replica, demote the primary, move the DNS name. Before,
    the blocked call got UNBLOCKED, then every call failed READONLY and the worker stayed."""
    a_port, b_port = _free(), _free()
    a = start_server("--port", str(a_port), port=a_port)
    b = start_server("--port", str(b_port), "--replicaof", "127.0.0.1", str(a_port), port=b_port)
    wait_until(lambda: redis.Redis(port=b_port).info("replication")["master_link_status"] == "up", 10, "sync")
    proxy = MovableProxy(a_port)
    worker = None

    def fail_over() -> None:
        redis.Redis(port=b_port).replicaof("NO", "ONE")
        redis.Redis(port=a_port).replicaof("127.0.0.1", b_port)
        proxy.move(b_port)

    try:
        worker = WorkerProcess(proxy.url, QUEUE, FAKE)
        results = run_producers(proxy.url, 8.0, fail_over)
        counts = summarize(results)
        print(f"\nunannounced failover under 10 producers: {counts}")
        assert "WRONG VECTOR" not in counts
        late = [o for o, _ in results[-50:]]
        assert late.count("ok") == len(late), late
        assert redis.Redis(port=a_port).info("replication")["role"] == "slave"  # A answers READONLY now
        assert redis.Redis(port=b_port).llen(QUEUE) == 0  # the worker serves the new primary
    finally:
        if worker is not None:
            worker.kill()
        proxy.close()
        for p in (a, b):
            p.kill()
            p.wait(10)


def _free() -> int:
    from embedq.tools.local import free_port

    return free_port()


@pytest.fixture
def cluster_ports() -> Iterator[list[int]]:
    """A real 3-master Redis Cluster on loopback."""
    cluster = ClusterSet(3)
    yield cluster.ports
    cluster.stop()


CLUSTER_QUEUE = "{topo}:requests"


async def run_the_core(url: str, queue: str, tmp_path: Path, *, rq: bool) -> None:
    """The core on one topology: the online path, a long call, kill -9 recovery, the asyncio
    client, status, serve, and a bulk job (through RQ when ``rq``, else in the foreground)."""
    from embedq.topology import client_from_url

    slow = {**FAKE, "EMBED_TEST_ENCODE_DELAY": "0.2", "EMBED_HEARTBEAT_TTL": "1"}
    doomed = WorkerProcess(url, queue, {**slow, "EMBED_WORKER_ID": "doomed"})
    try:
        survivor = WorkerProcess(url, queue, {**slow, "EMBED_WORKER_ID": "survivor"})
    except BaseException:
        doomed.kill()
        raise
    admin = client_from_url(url)
    keys = Keys(queue)
    try:
        with EmbeddingClient.from_url(url, queue=queue, timeout=15) as client:
            np.testing.assert_allclose(client.embed(["군집"]), [fake_vector("query", "군집")], rtol=1e-6)
            texts = [f"문서 {i}" for i in range(60)]
            expected = np.stack([fake_vector("passage", t) for t in texts])
            np.testing.assert_allclose(client.embed(texts, "passage"), expected, rtol=1e-6)
            # kill -9 a worker holding requests: the other reaps them, every call is answered
            calls = [client.call([f"재분배 {i}"]) for i in range(24)]
            client.send(*calls)
            wait_until(lambda: admin.llen(keys.processing("doomed")) > 0, 10, "doomed to hold requests")
            doomed.proc.kill()
            for call in calls:
                assert client.wait(call).shape == (1, 8)
            assert "worker doomed is gone" in survivor.log(), survivor.log()
        async with AsyncEmbeddingClient.from_url(url, queue=queue) as aclient:
            assert (await aclient.embed(["비동기"])).shape == (1, 8)
        status = embedq("status", "--redis-url", url, "--queue", queue)
        assert status.returncode == 0 and "survivor" in status.stdout, status.stderr
        with TestClient(create_app(ApiSettings(redis_url=url, queue=queue))) as api:
            assert api.post("/embed", json={"texts": ["http"]}).json()["dim"] == 8
        docs = tmp_path / "docs.jsonl"
        docs.write_text("".join(json.dumps({"id": i, "text": f"문서 {i}"}) + "\n" for i in range(30)))
        out = str(tmp_path / "out")
        if rq:
            submitted = embedq("bulk", "submit", str(docs), out, "--redis-url", url, "--queue", queue)
            assert submitted.returncode == 0, submitted.stderr
            ran = embedq("bulk", "worker", "--burst", "--redis-url", url)
            assert ran.returncode == 0, ran.stderr[-3000:]
        else:
            ran = embedq("bulk", "run", str(docs), out, "--redis-url", url, "--queue", queue, "--quiet")
            assert ran.returncode == 0, ran.stderr
        assert np.load(tmp_path / "out" / "vectors.npy").shape == (30, 8)
    finally:
        doomed.kill()
        assert survivor.terminate() == 0, survivor.log()


async def test_the_core_runs_on_a_3_master_redis_cluster(cluster_ports: list[int], tmp_path: Path) -> None:
    """A hash-tagged queue puts every key of the deployment in one slot."""
    url = f"redis+cluster://127.0.0.1:{cluster_ports[1]}/0"
    await run_the_core(url, CLUSTER_QUEUE, tmp_path, rq=False)
    rq = embedq("bulk", "submit", str(tmp_path / "docs.jsonl"), str(tmp_path / "rq"), "--redis-url", url)
    assert rq.returncode == 2 and "RQ does not run on Redis Cluster" in rq.stderr


async def test_the_core_runs_on_a_sentinel_managed_primary(tmp_path: Path) -> None:
    sentinel = SentinelSet()
    try:
        await run_the_core(sentinel.url, QUEUE, tmp_path, rq=True)
    finally:
        sentinel.stop()


def test_a_cluster_without_a_hash_tagged_queue_or_url_is_refused_clearly(cluster_ports: list[int]) -> None:
    """Instead of CROSSSLOT, an AttributeError, or a worker retrying forever with "unexpected"."""
    url = f"redis+cluster://127.0.0.1:{cluster_ports[0]}/0"
    with pytest.raises(TypeError, match="hash tag"):
        EmbeddingClient(redis.RedisCluster(host="127.0.0.1", port=cluster_ports[0]), queue=QUEUE)
    with pytest.raises(TypeError, match="hash tag"):
        EmbeddingClient.from_url(url, queue=QUEUE)
    refused = subprocess.run(
        [sys.executable, "-m", "embedq.worker", "--redis-url", url, "--queue", QUEUE],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, **FAKE},
    )  # fmt: skip
    assert refused.returncode == 2 and "hash tag" in refused.stderr, refused.stderr
    plain = f"redis://127.0.0.1:{cluster_ports[0]}/0"  # a cluster node through a plain URL
    with pytest.raises(EmbedqError, match="redis\\+cluster://"):
        EmbeddingClient.from_url(plain, queue=CLUSTER_QUEUE, timeout=2).embed(["x"])
    worker = WorkerProcess(plain, QUEUE, FAKE, wait_ready=False)
    try:
        wait_until(lambda: "cluster mode" in worker.log(), 30, "the worker to name the problem")
        assert "unexpected error" not in worker.log()
    finally:
        worker.kill()
