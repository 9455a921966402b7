"""Operating several workers: both take work, ``embedq status`` sees them, metrics add up."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from embedq import Call, EmbeddingClient
from embedq.protocol import Keys
from tests.support.requests import make_request
from tests.support.servers import ROOT, RedisServer, WorkerProcess, bundled_model_path, free_port, wait_until

pytestmark = pytest.mark.slow

QUEUE = "ops:requests"
DELAY = 2.5
SLOW = {"EMBED_ENCODER": "tests.support.faulty_encoder:build", "EMBED_TEST_ENCODE_DELAY": str(DELAY)}


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer) -> Iterator[tuple[WorkerProcess, WorkerProcess, int]]:
    """Two slow workers on one queue (each batch takes DELAY s more); the first serves metrics."""
    port = free_port()
    a = WorkerProcess(
        redis_server.url, QUEUE, {**SLOW, "EMBED_WORKER_ID": "ops-a", "EMBED_METRICS_PORT": str(port)}
    )
    b = WorkerProcess(redis_server.url, QUEUE, {**SLOW, "EMBED_WORKER_ID": "ops-b"})
    yield a, b, port
    for w in (a, b):
        assert w.terminate() == 0, w.log()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("embedq_")
    }


def status(redis_server: RedisServer) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedq.cli",
            "status",
            "--redis-url",
            redis_server.url,
            "--queue",
            QUEUE,
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_two_workers_share_the_load_and_metrics_add_up(
    redis_server: RedisServer, pair: tuple[WorkerProcess, WorkerProcess, int]
) -> None:
    _, _, port = pair
    before = scrape(port)
    client = EmbeddingClient.from_url(redis_server.url, queue=QUEUE, timeout=60)

    def producer(p: int) -> list[Call]:
        calls = []
        for i in range(4):
            call = client.call([f"질문 {p}-{i}"])
            client.send(call)
            client.wait(call)
            calls.append(call)
        return calls

    with ThreadPoolExecutor(12) as pool:
        calls = [c for cs in pool.map(producer, range(12)) for c in cs]
    by_worker = Counter(c.replies[0].worker for c in calls if c.replies[0])
    assert set(by_worker) == {"ops-a", "ops-b"}, by_worker
    batches_a = {
        (c.replies[0].encode_ms, c.replies[0].batch_size) for c in calls if c.replies[0].worker == "ops-a"
    }

    after = scrape(port)
    moved = {k: after[k] - before.get(k, 0.0) for k in after}
    online = 'lane="online"'
    assert moved[f'embedq_requests_total{{{online},outcome="ok"}}'] == by_worker["ops-a"]
    assert moved[f'embedq_requests_total{{{online},outcome="error"}}'] == 0
    assert moved[f"embedq_texts_encoded_total{{{online}}}"] == by_worker["ops-a"]
    assert moved[f"embedq_batch_size_count{{{online}}}"] == len(batches_a)
    assert moved[f"embedq_batch_size_sum{{{online}}}"] == sum(size for _, size in batches_a)
    assert moved[f"embedq_encode_seconds_count{{{online}}}"] == len(batches_a)
    assert moved[f"embedq_encode_seconds_sum{{{online}}}"] >= DELAY * len(batches_a)  # encoder delay
    assert moved[f"embedq_queue_wait_seconds_count{{{online}}}"] == by_worker["ops-a"]
    assert moved['embedq_texts_encoded_total{lane="bulk"}'] == 0
    wait_until(
        lambda: scrape(port)['embedq_queue_depth{queue="online"}'] == 0,
        5,
        "the depth gauge to show the drained queue",
    )
    assert after['embedq_queue_depth{queue="bulk"}'] == 0
    info = [k for k in after if k.startswith("embedq_worker_info{")]
    assert len(info) == 1
    assert 'dim="384"' in info[0]
    assert 'threads="2"' in info[0]


def test_status_lists_both_workers_and_the_depths(
    redis_server: RedisServer, pair: tuple[WorkerProcess, WorkerProcess, int]
) -> None:
    r = redis_server.client()
    keys = Keys(QUEUE)
    client = EmbeddingClient.from_url(redis_server.url, queue=QUEUE, timeout=60)
    r.delete(keys.dead)
    calls = [client.call([f"상태 {i}"]) for i in range(20)]
    client.send(*calls)
    # each worker takes a batch of 8 and encodes it for DELAY s: 4 stay queued meanwhile

    def held() -> tuple[int, int, int]:
        return r.llen(keys.processing("ops-a")), r.llen(keys.processing("ops-b")), r.llen(keys.queue)

    wait_until(lambda: held() == (8, 8, 4), 10, "both workers to hold a full batch, 4 waiting")
    r.rpush(keys.queue, b"junk one", b"junk two")  # no id: dead-lettered when taken
    bulk = [make_request("문서", kind="passage", timeout=60) for _ in range(3)]
    r.rpush(keys.bulk, *(b.pack() for b in bulk))  # served after the online ones
    report = status(redis_server)
    assert sorted(w["id"] for w in report["workers"]) == ["ops-a", "ops-b"]
    assert report["depth"] == {"online": 6, "bulk": 3, "in_progress": 16}
    assert {w["id"]: w["holding"] for w in report["workers"]} == {"ops-a": 8, "ops-b": 8}
    assert {w["model"] for w in report["workers"]} == {bundled_model_path()}
    assert all(w["threads"] == 2 and w["max_batch"] == 8 for w in report["workers"])
    for call in calls:
        client.wait(call)
    wait_until(lambda: r.llen(keys.dead) == 2, 10, "the junk to be dead-lettered")
    wait_until(lambda: all(r.exists(keys.reply(b.id)) for b in bulk), 10, "the bulk requests answered")
    assert status(redis_server)["dead_letters"] == 2
    wait_until(
        lambda: status(redis_server)["last_minute"]["requests_per_s"] > 0, 10, "traffic in the heartbeat"
    )
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedq.cli",
            "status",
            "--redis-url",
            redis_server.url,
            "--queue",
            QUEUE,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "2 live worker(s)" in text
    assert "ops-a" in text
    assert "ops-b" in text
