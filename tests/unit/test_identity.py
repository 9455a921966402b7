"""Model identity (worker/identity.py): the served name, the request pins, one model per queue."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest

from embedq.protocol import Heartbeat, Keys
from embedq.worker.identity import pin_refusal, queue_refusal, served_name
from tests.support.requests import make_request
from tests.support.worker_harness import KEYS, make_worker, push, reply_of, request


def test_the_served_name_is_the_setting_else_the_hub_id_else_what_the_path_names(tmp_path: Path) -> None:
    assert served_name("e5", "intfloat/multilingual-e5-large") == "e5"
    assert served_name("", "intfloat/multilingual-e5-large") == "intfloat/multilingual-e5-large"
    snapshot = tmp_path / "hub" / "models--intfloat--multilingual-e5-large" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert served_name("", str(snapshot)) == "intfloat/multilingual-e5-large"
    folder = tmp_path / "my-e5" / "model"
    folder.mkdir(parents=True)
    assert served_name("", str(folder)) == "my-e5"


def test_a_request_pinned_to_another_model_or_fingerprint_is_refused() -> None:
    plain = make_request("q")
    assert pin_refusal(plain, "e5", "/models/e5", "f1") is None
    by_name = make_request("q")
    object.__setattr__(by_name, "model", "e5")
    assert pin_refusal(by_name, "e5", "/models/e5", "f1") is None
    object.__setattr__(by_name, "model", "/models/e5")  # the model's path works as well
    assert pin_refusal(by_name, "e5", "/models/e5", "f1") is None
    object.__setattr__(by_name, "model", "bge-m3")
    assert "asks for model 'bge-m3', but this worker serves 'e5'" in (
        pin_refusal(by_name, "e5", "x", "f1") or ""
    )
    by_print = make_request("q")
    object.__setattr__(by_print, "fingerprint", "f0")
    assert "pinned to fingerprint f0" in (pin_refusal(by_print, "e5", "x", "f1") or "")


def beat(r: fakeredis.FakeRedis, worker: str, fingerprint: str, served: str = "e5") -> None:
    r.sadd(KEYS.workers, worker)
    r.set(KEYS.heartbeat(worker), Heartbeat(worker=worker, model=served, served_name=served, dim=8,
                                            fingerprint=fingerprint).pack(), px=5000)  # fmt: skip


def test_a_worker_refuses_a_queue_served_by_another_model() -> None:
    r = fakeredis.FakeRedis()
    assert queue_refusal(r, KEYS, "me", "e5", "f1") is None  # nobody serves it yet
    beat(r, "old", "f1")
    beat(r, "me", "f0")  # this worker's own earlier heartbeat (a restart) does not count
    assert queue_refusal(r, KEYS, "me", "e5", "f1") is None  # the same model: a replica
    beat(r, "other", "f2", served="e5-v2")
    why = queue_refusal(r, KEYS, "me", "e5", "f1")
    assert why is not None and "served by 'e5-v2' (fingerprint f2" in why and "its own EMBED_QUEUE" in why
    assert queue_refusal(r, Keys("other:requests"), "me", "e5", "f1") is None  # another queue: fine
    r.delete(KEYS.heartbeat("other"))
    beat(r, "renamed", "f1", served="e5-prod")  # the same weights under another name: pins would break
    assert "served by 'e5-prod'" in (queue_refusal(r, KEYS, "me", "e5", "f1") or "")


def test_the_worker_answers_a_pinned_request_of_another_model_with_model_mismatch() -> None:
    r = fakeredis.FakeRedis()
    worker, encoder = make_worker(r, served_name="e5")
    good, wrong = request("fine"), make_request("wrong model", model="bge-m3")
    push(r, good, wrong)
    worker.serve_once(block=0.01)
    ok, refused = reply_of(r, good), reply_of(r, wrong)
    assert ok.ok and (ok.model, ok.fingerprint) == ("e5", encoder.fingerprint)
    assert refused.code == "model_mismatch" and refused.model == "e5"
    assert encoder.calls == [1]  # the other model's request was never encoded


@pytest.mark.parametrize("pin", [None, "e5"])
def test_every_reply_names_the_model_that_made_it(pin: str | None) -> None:
    r = fakeredis.FakeRedis()
    worker, encoder = make_worker(r, served_name="e5")
    req = make_request("x" * 60, model=pin)  # over the 50-character limit: an error, named all the same
    push(r, req)
    worker.serve_once(block=0.01)
    reply = reply_of(r, req)
    assert reply.code == "text_too_long" and (reply.model, reply.fingerprint) == ("e5", encoder.fingerprint)
