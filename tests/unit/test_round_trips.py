"""The worker's Redis round trips per batch (worker/loop.py, worker/lane.py): the finish script
takes the next batch in the same round trip, and a take that the last script saw would find
nothing is not sent. Counted on fakeredis; the timing is benchmarks/batch_cost.py's."""

from __future__ import annotations

import threading
from typing import Any

import fakeredis
import pytest

from tests.support.worker_harness import KEYS, make_worker, push, reply_of, request


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def r(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The test's own client (pushes, replies): its commands are not the worker's."""
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def w(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The worker's client, whose commands are counted."""
    return fakeredis.FakeRedis(server=server)


class RoundTrips:
    """What a client sends, a round trip per entry: a command's name (a script's by what it
    does), or a pipeline's names joined by '+'."""

    def __init__(self, client: Any, scripts: dict[str, str]) -> None:
        self.sent: list[str] = []
        self._scripts = scripts
        command, pipeline = client.execute_command, client.pipeline

        def record(*args: Any, **options: Any) -> Any:
            self.sent.append(self.name(args))
            return command(*args, **options)

        def recorded_pipeline(*args: Any, **options: Any) -> Any:
            pipe = pipeline(*args, **options)
            execute = pipe.execute

            def record_execute(*a: Any, **o: Any) -> Any:
                self.sent.append("+".join(self.name(c[0]) for c in pipe.command_stack))
                return execute(*a, **o)

            pipe.execute = record_execute
            return pipe

        client.execute_command = record
        client.pipeline = recorded_pipeline

    def name(self, args: Any) -> str:
        name = str(args[0]).upper()
        return self._scripts.get(str(args[1]), name) if name == "EVALSHA" else name

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


def watch(worker: Any, w: fakeredis.FakeRedis) -> RoundTrips:
    scripts = worker.queue._scripts
    return RoundTrips(w, {scripts.take.sha: "take", scripts.finish.sha: "finish"})


def test_a_lone_question_at_idle_costs_two_round_trips(
    r: fakeredis.FakeRedis, w: fakeredis.FakeRedis
) -> None:
    worker, _ = make_worker(w)
    push(r, request("warm-up"))  # loads the scripts
    worker.serve_once(block=0.01)
    commands = watch(worker, w)
    q = request("lone")
    later = threading.Timer(0.05, push, args=(r, q))  # arrives while the worker waits
    later.start()
    assert worker.serve_once(block=5.0) == 1
    later.join()
    assert reply_of(r, q).ok
    # the wait and the take go together: Redis runs the take when the token comes
    assert commands.take() == ["BLPOP+take", "finish"]
    # the finish saw both lanes empty: straight back to waiting, no empty takes first
    assert worker.serve_once(block=0.01) == 0
    assert commands.take() == ["BLPOP+take"]


def test_a_busy_worker_sends_one_script_per_batch(r: fakeredis.FakeRedis, w: fakeredis.FakeRedis) -> None:
    worker, encoder = make_worker(w)
    original = encoder.encode
    questions = [request(f"q{i}") for i in range(6)]

    def encode_and_ask(texts: list[str], kinds: list[str]) -> Any:  # the next question comes meanwhile
        if len(encoder.calls) < len(questions):
            push(r, questions[len(encoder.calls)])
        return original(texts, kinds)

    encoder.encode = encode_and_ask  # type: ignore[method-assign]
    push(r, request("first"))
    assert worker.serve_once(block=0) == 1
    commands = watch(worker, w)
    for _ in questions:
        assert worker.serve_once(block=0) == 1
    # each finish wrote its replies and took the question that came during its encode
    assert commands.take() == ["finish"] * len(questions)
    assert all(reply_of(r, q).ok for q in questions)
    assert r.llen(KEYS.processing("w1")) == 0


def test_a_stopping_worker_takes_nothing_more_with_its_last_answer(
    r: fakeredis.FakeRedis, w: fakeredis.FakeRedis
) -> None:
    worker, encoder = make_worker(w)
    original = encoder.encode
    later = request("later")

    def encode_and_stop(texts: list[str], kinds: list[str]) -> Any:  # asked to stop mid-batch
        push(r, later)
        worker.stop()
        return original(texts, kinds)

    encoder.encode = encode_and_stop  # type: ignore[method-assign]
    push(r, request("first"))
    assert worker.serve_once(block=0) == 1
    assert r.llen(KEYS.queue) == 1 and r.llen(KEYS.processing("w1")) == 0  # left for the others
    assert not worker.batcher.pending
