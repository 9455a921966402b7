"""The wire protocol: what producers send, what workers accept, what replies carry."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from embedq.protocol import (
    ID_PATTERN,
    PROTOCOL_VERSION,
    Keys,
    Limits,
    Rejected,
    Reply,
    Request,
    build_requests,
    default_max_bytes,
    new_request_id,
    parse_request,
    peek_id,
    shorten,
    unpack_reply,
)

LIMITS = Limits(max_texts=8, max_text_chars=100)


def request_map(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "id": new_request_id(),
        "kind": "query",
        "texts": ["연남 카페 추천해줘"],
        "deadline_ms": 2_000_000_000_000,
        "sent_ms": 1_700_000_000_000,
    }
    body.update(changes)
    return body


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


ROOMY = Limits(max_texts=8, max_text_chars=100, max_bytes=1 << 30)
"""The test limits with no byte cap to speak of, to reach the checks after it."""


def rejection(raw: bytes, limits: Limits | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse_request(raw, limits or ROOMY)
    return info.value


def test_keys_derive_from_queue_name() -> None:
    keys = Keys("embed:requests")
    rid = new_request_id()
    assert keys.reply(rid) == f"embed:reply:{rid}"
    assert keys.dead == "embed:dead"
    assert keys.processing("w1") == "embed:processing:w1"
    other = Keys("tenant-a:requests")
    assert other.reply(rid) == f"tenant-a:reply:{rid}"


@pytest.mark.parametrize("bad", ["", "x" * 32, "../../etc", "ABCDEF" * 6, "a" * 31, None, 7])
def test_reply_key_refuses_anything_but_an_id(bad: object) -> None:
    with pytest.raises(ValueError, match="not a request id"):
        Keys().reply(bad)  # type: ignore[arg-type]


def test_request_round_trip() -> None:
    req = Request(id=new_request_id(), kind="passage", texts=["a", "b"], deadline_ms=2_000_000, sent_ms=1)
    parsed = parse_request(req.pack(), LIMITS)
    assert parsed == req
    strict = Request(id=req.id, kind="query", texts=["a"], deadline_ms=5, sent_ms=1, truncate=False)
    assert parse_request(strict.pack(), LIMITS) == strict


def test_build_requests_splits_by_max_batch_with_one_deadline() -> None:
    texts = [f"t{i}" for i in range(19)]
    reqs = build_requests(texts, "passage", max_batch=8, timeout=5.0, now_ms=1_000)
    assert [len(r.texts) for r in reqs] == [8, 8, 3]
    assert [t for r in reqs for t in r.texts] == texts
    assert {(r.deadline_ms, r.sent_ms) for r in reqs} == {(6_000, 1_000)}
    assert len({r.id for r in reqs}) == 3
    assert all(ID_PATTERN.match(r.id) for r in reqs)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xc1\xff not msgpack", "invalid_msgpack"),
        (pack([1, 2, 3]), "invalid_request"),
        (pack("just a string"), "invalid_request"),
        (pack({"v": 1, "kind": "query", "texts": ["a"]}), "invalid_id"),
        (pack(request_map(id="not-hex")), "invalid_id"),
        (pack(request_map(id=12345)), "invalid_id"),
    ],
)
def test_unanswerable_requests_have_no_id(raw: bytes, code: str) -> None:
    rej = rejection(raw)
    assert rej.code == code
    assert rej.request_id is None
    assert rej.message


@pytest.mark.parametrize(
    ("changes", "code", "phrase"),
    [
        ({"v": 99}, "unsupported_version", "v2"),
        ({"v": 1}, "unsupported_version", "upgrade the producer"),
        ({"kind": "sentence"}, "invalid_kind", "'query' or 'passage'"),
        ({"texts": []}, "empty_texts", "at least one"),
        ({"texts": "a string"}, "invalid_request", "list of strings"),
        ({"texts": ["ok", 42]}, "invalid_text", "text 1 is int"),
        ({"texts": ["ok", ""]}, "empty_text", "text 1 is empty"),
        ({"texts": ["   "]}, "empty_text", "text 0"),
        ({"texts": ["x" * 101]}, "text_too_long", "101 characters; the limit is 100"),
        ({"texts": ["x"] * 9}, "too_many_texts", "at most 8"),
        ({"deadline_ms": "soon"}, "invalid_request", "deadline_ms"),
        ({"deadline_ms": 1.5}, "invalid_request", "deadline_ms"),
        ({"truncate": "no"}, "invalid_request", "truncate"),
        ({"kind": "q" * 100_000}, "invalid_kind", "(100000 characters)"),
    ],
)
def test_refusals_carry_the_id_and_say_why(changes: dict[str, object], code: str, phrase: str) -> None:
    body = request_map(**changes)
    rej = rejection(pack(body))
    assert rej.code == code
    assert rej.request_id == body["id"]
    assert phrase in rej.message


def test_text_at_the_limit_is_accepted() -> None:
    parsed = parse_request(pack(request_map(texts=["x" * 100] * 8)), LIMITS)
    assert len(parsed.texts) == 8


def test_reply_round_trip_keeps_float32_rows() -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    reply = Reply(
        id=new_request_id(), vectors=vectors, queue_ms=1.5, encode_ms=9.25, batch_size=7, worker="w"
    )
    back = unpack_reply(reply.pack())
    assert back.ok
    assert back.vectors is not None
    np.testing.assert_array_equal(back.vectors, vectors)
    assert (back.queue_ms, back.encode_ms, back.batch_size, back.worker) == (1.5, 9.25, 7, "w")
    raw = msgpack.unpackb(reply.pack())
    assert raw["vectors"] == vectors.astype("<f4").tobytes()
    assert (raw["count"], raw["dim"]) == (3, 5)


def test_error_reply_round_trip() -> None:
    reply = Reply(id=new_request_id(), code="text_too_long", message="text 0 has 9000 characters")
    back = unpack_reply(reply.pack())
    assert not back.ok
    assert (back.code, back.message) == ("text_too_long", "text 0 has 9000 characters")


def test_truncated_reply_is_refused() -> None:
    body = msgpack.unpackb(Reply(id=new_request_id(), vectors=np.ones((2, 4), np.float32)).pack())
    body["vectors"] = body["vectors"][:-4]
    with pytest.raises(ValueError, match="expected 2 x 4"):
        unpack_reply(msgpack.packb(body))


def test_echoed_fields_are_shortened() -> None:
    rej = rejection(pack(request_map(id="z" * 10_000_000)))
    assert rej.code == "invalid_id"
    assert len(rej.message) < 400 and "10000000 characters" in rej.message
    assert len(shorten(b"x" * 5000)) < 300


def test_a_request_that_does_not_decode_is_answered_when_its_id_can_be_found() -> None:
    body = request_map()
    good = pack(body)
    text = "연남 카페 추천해줘".encode()
    broken = good.replace(text, b"\xff" * len(text))  # invalid UTF-8 in a text
    rej = rejection(broken)
    assert (rej.code, rej.request_id) == ("invalid_msgpack", body["id"])
    surrogate = good.replace(text, "\ud800".encode("utf-8", "surrogatepass") + text[3:])
    assert rejection(surrogate).request_id == body["id"]
    nested = b"\x83" + pack("v") + pack(2) + pack("id") + pack(body["id"]) + pack("texts")
    nested += b"\x91" * 5000 + pack("x")  # texts nested 5,000 arrays deep
    assert rejection(nested).request_id == body["id"]
    assert peek_id(b"\x00garbage") is None


def test_a_request_over_the_byte_cap_is_refused_before_decoding() -> None:
    limits = Limits(max_texts=8, max_text_chars=100, max_bytes=1000)
    body = request_map(texts=["x" * 100] * 8)
    raw = pack(body)
    assert len(raw) > 800
    assert parse_request(raw, Limits(max_texts=8, max_text_chars=100)).texts  # the default cap fits
    with pytest.raises(Rejected) as info:
        parse_request(pack(request_map(texts=["x" * 100] * 8, pad="y" * 5000)), limits)
    assert info.value.code == "request_too_large" and info.value.request_id is not None
    assert Limits(max_texts=8, max_text_chars=8192).byte_cap == default_max_bytes(8, 8192)


def test_a_reply_names_the_texts_it_answers() -> None:
    req = Request(id=new_request_id(), kind="query", texts=["a"], deadline_ms=1, sent_ms=0)
    other = Request(id=req.id, kind="query", texts=["b"], deadline_ms=1, sent_ms=0)
    assert req.digest != other.digest
    reply = Reply(id=req.id, vectors=np.ones((1, 2), np.float32), digest=req.digest, truncated=(0,))
    back = unpack_reply(reply.pack())
    assert (back.digest, back.truncated) == (req.digest, (0,))


def test_pins_and_the_answering_model_travel_and_bad_pins_are_refused() -> None:
    from embedq.protocol import Limits, Reply, Request, parse_request, unpack_reply

    req = Request.new("query", ["q"], now_ms=0, timeout_s=5, model="e5", fingerprint="f1")
    assert parse_request(req.pack(), Limits()) == req
    plain = Request.new("query", ["q"], now_ms=0, timeout_s=5)
    assert b"model" not in plain.pack() and b"fingerprint" not in plain.pack()  # old workers: same bytes
    for bad in (3, "", "x" * 300):
        body = msgpack.unpackb(req.pack())
        body["model"] = bad
        with pytest.raises(Rejected, match="field 'model' must be a non-empty string"):
            parse_request(msgpack.packb(body), Limits())
    reply = unpack_reply(Reply(id=req.id, code="x", message="y", model="e5", fingerprint="f1").pack())
    assert (reply.model, reply.fingerprint) == ("e5", "f1")
    assert unpack_reply(Reply(id=req.id, code="x", message="y").pack()).model == ""  # an old worker's


@pytest.mark.parametrize(
    "text", ["", "   ", "\x00", "\u200b\u200c", "\ufeff", "\u00ad", "\t\r\n\u3000", "\u2028"]
)
def test_texts_with_nothing_visible_are_refused_like_whitespace(text: str) -> None:
    rej = rejection(pack(request_map(texts=["fine", text])))
    assert (rej.code, rej.request_id is not None) == ("empty_text", True)
    assert "text 1 is empty or only whitespace or invisible characters" in rej.message


@pytest.mark.parametrize("text", ["a\u200b", "\U0001f600", "\u00e9", "\ufb01", "\uff1a"])
def test_a_text_with_anything_visible_is_a_text(text: str) -> None:
    assert parse_request(pack(request_map(texts=[text])), LIMITS).texts == [text]


def test_a_hash_tagged_queue_puts_every_key_in_one_cluster_slot() -> None:
    from redis.crc import key_slot

    keys = Keys("{embed}:requests")
    assert keys.slotted and not Keys("embed:requests").slotted and not Keys("{}:requests").slotted
    names = [keys.queue, keys.bulk, keys.wake, keys.dead, keys.workers, keys.processing("w1"),
             keys.reply("0" * 32), keys.heartbeat("w1"), keys.cache_entry("fp", "query", "q")]  # fmt: skip
    assert len({key_slot(n.encode()) for n in names}) == 1
