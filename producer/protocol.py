"""The wire protocol between producers and workers: key names, request and reply maps.

Both sides import this module (the worker depends on the producer package, never the reverse),
so a field or a key name is defined exactly once. Everything on the wire is msgpack; the README
documents the same maps for producers written in other languages.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
"""Version carried in every request and reply (field ``v``)."""

DEFAULT_QUEUE = "embed:requests"
"""The request list producers RPUSH onto and workers take from the left."""

KINDS = ("query", "passage")
"""What a text is: a question to search with, or a document to be found."""

ID_PATTERN = re.compile(r"\A[0-9a-f]{32}\Z")
"""A request id is a uuid4 in lowercase hex; the reply key is derived from it and nothing else."""

DTYPE = np.dtype("<f4")
"""Vectors travel as float32 little-endian bytes, row after row."""


@dataclass(frozen=True)
class Keys:
    """Every Redis key name of one deployment, derived from the request queue's name.

    The queue ``embed:requests`` gives the namespace ``embed``: replies at ``embed:reply:<id>``,
    the dead-letter list ``embed:dead``, a worker's in-flight list ``embed:processing:<worker>``,
    bulk requests at ``embed:bulk``.
    Two deployments on one Redis stay apart by choosing two queue names.
    """

    queue: str = DEFAULT_QUEUE

    @property
    def namespace(self) -> str:
        """The queue name without its ``:requests`` suffix."""
        return self.queue.removesuffix(":requests")

    @property
    def reply_prefix(self) -> str:
        """Prefix of the per-request reply lists."""
        return f"{self.namespace}:reply:"

    @property
    def dead(self) -> str:
        """Capped list of requests that could not be answered (no usable id)."""
        return f"{self.namespace}:dead"

    def reply(self, request_id: str) -> str:
        """The reply list of one request; refuses anything that is not a valid request id."""
        if not isinstance(request_id, str) or not ID_PATTERN.match(request_id):
            raise ValueError(f"not a request id: {request_id!r}")
        return self.reply_prefix + request_id

    def processing(self, worker_id: str) -> str:
        """The list holding the online requests one worker has taken and not yet answered."""
        return f"{self.namespace}:processing:{worker_id}"

    @property
    def bulk(self) -> str:
        """The low-priority request list of bulk jobs: served only while no online request waits."""
        return f"{self.namespace}:bulk"

    def bulk_processing(self, worker_id: str) -> str:
        """The list holding the bulk request one worker has taken and not yet answered."""
        return f"{self.namespace}:bulk-processing:{worker_id}"

    def lanes(self, worker_id: str) -> list[tuple[str, str]]:
        """(request list, that worker's processing list) for the online and the bulk lane."""
        return [(self.queue, self.processing(worker_id)), (self.bulk, self.bulk_processing(worker_id))]

    @property
    def workers(self) -> str:
        """Set of the ids of workers that have served this queue (live or not yet reaped)."""
        return f"{self.namespace}:workers"

    def heartbeat(self, worker_id: str) -> str:
        """A worker's heartbeat: exists (with a short expiry) while its loop runs."""
        return f"{self.namespace}:heartbeat:{worker_id}"

    def attempts(self, request_id: str) -> str:
        """How many times a request was taken and not answered (its worker died, its encode failed)."""
        return f"{self.namespace}:attempts:{request_id}"

    def reaping(self, worker_id: str) -> str:
        """Lock held while one reaper returns a dead worker's requests to the queue."""
        return f"{self.namespace}:reaping:{worker_id}"


def new_request_id() -> str:
    """A fresh request id (uuid4, 32 lowercase hex digits)."""
    return uuid.uuid4().hex


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One producer request: texts of one kind, answered by one reply."""

    id: str
    kind: str
    texts: list[str]
    deadline: float
    sent_at: float = field(default_factory=time.time)
    version: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        """The msgpack map a producer RPUSHes onto the request queue."""
        return msgpack.packb(
            {
                "v": self.version,
                "id": self.id,
                "kind": self.kind,
                "texts": self.texts,
                "deadline": self.deadline,
                "sent_at": self.sent_at,
            },
            use_bin_type=True,
        )


def build_requests(texts: Sequence[str], kind: str, *, max_batch: int, timeout: float) -> list[Request]:
    """Split texts into requests of at most ``max_batch`` texts, all sharing one deadline.

    Splitting keeps one large call from filling a worker's batch by itself; the caller
    reassembles the replies in this order.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    now = time.time()
    deadline = now + timeout
    items = list(texts)
    return [
        Request(
            id=new_request_id(),
            kind=kind,
            texts=items[i : i + max_batch],
            deadline=deadline,
            sent_at=now,
        )
        for i in range(0, len(items), max_batch)
    ]


def peek_id(raw: bytes) -> str | None:
    """The request id inside raw request bytes, or None if it has no usable one."""
    try:
        obj = msgpack.unpackb(raw, raw=False)
    except Exception:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and ID_PATTERN.match(rid) else None


class Rejected(Exception):
    """A request the worker refuses; ``request_id`` is set when the producer can be told."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """What a worker accepts in one request."""

    max_texts: int = 8
    max_text_chars: int = 8192
    texts_setting: str = "EMBED_MAX_BATCH"
    """The worker setting that sets ``max_texts``, named in the refusal."""


def _describe(value: Any) -> str:
    return type(value).__name__


def parse_request(raw: bytes, limits: Limits) -> Request:
    """Decode and validate one raw request, or raise ``Rejected`` with a message a person can act on.

    The id is checked first so that every later refusal can be sent back to its producer.
    """
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise Rejected(
            "invalid_msgpack", f"request is not valid msgpack ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise Rejected("invalid_request", f"request must be a msgpack map, got {_describe(obj)}")

    request_id = obj.get("id")
    if not isinstance(request_id, str) or not ID_PATTERN.match(request_id):
        shown = request_id if isinstance(request_id, (str, int, float)) else _describe(request_id)
        raise Rejected(
            "invalid_id", f"field 'id' must be 32 lowercase hex characters (uuid4().hex), got {shown!r}"
        )

    def reject(code: str, message: str) -> Rejected:
        return Rejected(code, message, request_id)

    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise reject(
            "unsupported_version",
            f"protocol version {version!r} is not supported; this worker speaks v{PROTOCOL_VERSION}",
        )
    kind = obj.get("kind")
    if kind not in KINDS:
        raise reject("invalid_kind", f"field 'kind' must be 'query' or 'passage', got {kind!r}")

    deadline = obj.get("deadline")
    if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
        raise reject("invalid_request", f"field 'deadline' must be a unix time in seconds, got {deadline!r}")
    sent_at = obj.get("sent_at", deadline)
    if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool):
        raise reject("invalid_request", f"field 'sent_at' must be a unix time in seconds, got {sent_at!r}")

    texts = obj.get("texts")
    if not isinstance(texts, list):
        raise reject("invalid_request", f"field 'texts' must be a list of strings, got {_describe(texts)}")
    if not texts:
        raise reject("empty_texts", "field 'texts' is empty: send at least one text")
    if len(texts) > limits.max_texts:
        raise reject(
            "too_many_texts",
            f"request has {len(texts)} texts; this worker accepts at most {limits.max_texts} "
            f"per request ({limits.texts_setting}): split it",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise reject("invalid_text", f"text {i} is {_describe(text)}, not a string")
        if not text.strip():
            raise reject("empty_text", f"text {i} is empty or only whitespace")
        if len(text) > limits.max_text_chars:
            raise reject(
                "text_too_long",
                f"text {i} has {len(text)} characters; the limit is {limits.max_text_chars} "
                "(EMBED_MAX_TEXT_CHARS). Split the text into chunks; it is not cut silently",
            )
    return Request(
        id=request_id,
        kind=kind,
        texts=texts,
        deadline=float(deadline),
        sent_at=float(sent_at),
    )


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A worker's answer to one request: vectors, or an error code and message."""

    id: str
    vectors: np.ndarray | None = None
    code: str | None = None
    message: str | None = None
    queue_ms: float = 0.0
    encode_ms: float = 0.0
    batch_size: int = 0
    worker: str = ""

    @property
    def ok(self) -> bool:
        """True when the reply carries vectors."""
        return self.vectors is not None

    def pack(self) -> bytes:
        """The msgpack map a worker RPUSHes onto the request's reply list."""
        body: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "id": self.id,
            "ok": self.ok,
            "queue_ms": round(self.queue_ms, 3),
            "encode_ms": round(self.encode_ms, 3),
            "batch_size": self.batch_size,
            "worker": self.worker,
        }
        if self.vectors is not None:
            matrix = np.ascontiguousarray(self.vectors, dtype=DTYPE)
            body["count"], body["dim"] = matrix.shape
            body["vectors"] = matrix.tobytes()
        else:
            body["code"] = self.code
            body["message"] = self.message
        return msgpack.packb(body, use_bin_type=True)


def unpack_reply(raw: bytes) -> Reply:
    """Decode a reply map; a malformed one raises ``ValueError`` naming what is wrong."""
    obj = msgpack.unpackb(raw, raw=False)
    if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION:
        raise ValueError(f"unexpected reply: {obj!r:.200}")
    common = {
        "id": obj.get("id", ""),
        "queue_ms": float(obj.get("queue_ms", 0.0)),
        "encode_ms": float(obj.get("encode_ms", 0.0)),
        "batch_size": int(obj.get("batch_size", 0)),
        "worker": str(obj.get("worker", "")),
    }
    if obj.get("ok"):
        count, dim = int(obj["count"]), int(obj["dim"])
        vectors = np.frombuffer(obj["vectors"], dtype=DTYPE)
        if vectors.size != count * dim:
            raise ValueError(f"reply holds {vectors.size} floats, expected {count} x {dim}")
        return Reply(vectors=vectors.reshape(count, dim), **common)
    return Reply(code=str(obj.get("code")), message=str(obj.get("message")), **common)
