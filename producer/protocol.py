"""The wire protocol between producers and workers: key names, request and reply maps.

Both sides import this module (the worker depends on the producer package, never the reverse),
so a field or a key name is defined exactly once. Everything on the wire is msgpack; the README
documents the same maps for producers written in other languages.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

from . import defaults

PROTOCOL_VERSION = 2
"""Version carried in every request and reply (field ``v``). Version 2 measures deadlines on the
Redis server's clock (``deadline_ms``), never on the producer's or the worker's."""

DEFAULT_QUEUE = defaults.QUEUE
"""The request list producers RPUSH onto and workers take from the left."""

KINDS = ("query", "passage")
"""What a text is: a question to search with, or a document to be found."""

ID_PATTERN = re.compile(r"\A[0-9a-f]{32}\Z")
"""A request id is a uuid4 in lowercase hex; the reply key is derived from it and nothing else."""

DTYPE = np.dtype("<f4")
"""Vectors travel as float32 little-endian bytes, row after row."""

WAKE_TOKENS_MAX = 64
"""The wake list is trimmed to this many tokens: enough to wake every idle worker of a fleet,
never a list that grows with the queue. Every script and pipeline that pushes tokens uses it."""

TOO_LARGE = (
    "request is {size} bytes; this worker accepts at most {cap} (EMBED_MAX_REQUEST_BYTES): "
    "send fewer or shorter texts"
)
"""The ``request_too_large`` message, filled in by Python (``too_large_message``) and by the
worker's take script (which replaces ``{size}`` and ``{cap}`` itself)."""

PEEK_BYTES = 4096
"""How much of an oversized request is read to find its id (it is never decoded whole)."""

ECHO_CHARS = 200
"""At most this much of any field a request carries is echoed into a reply, a dead letter or a
log line: a 10 MB id must not become a 10 MB log."""


BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
"""Unicode categories that show nothing: control and format characters (NUL, BOM, zero-width
space and joiners, soft hyphen) and separators. A text of only these is no text: it would
embed as the model's "empty" vector, the same for every such text."""


def is_blank(text: str) -> bool:
    """True for a text with nothing visible in it (empty, whitespace, invisible characters)."""
    return all(ch.isspace() or unicodedata.category(ch) in BLANK_CATEGORIES for ch in text)


def too_large_message(size: int, cap: int) -> str:
    """The ``request_too_large`` message for a request of ``size`` bytes over ``cap``."""
    return TOO_LARGE.format(size=size, cap=cap)


def deadline_ms(now_ms: int, timeout_s: float) -> int:
    """The Redis-clock deadline ``timeout_s`` seconds after ``now_ms``: the one place a deadline
    is computed (clients, the bulk window and tests all stamp requests through ``Request.new``)."""
    return now_ms + int(max(0.0, timeout_s) * 1000)


def shorten(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long it was."""
    if isinstance(value, (bytes, bytearray)):
        head = bytes(value[:limit])
        text = repr(head)
        return text if len(value) <= limit else f"{text}... ({len(value)} bytes)"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = (
        repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    )
    return text if len(text) <= limit else text[:limit] + "..."


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
    def slotted(self) -> bool:
        """True when the namespace is a Redis Cluster hash tag (``{embed}``): every key of the
        deployment then hashes to one slot, so its scripts and multi-key commands run on a cluster."""
        ns = self.namespace
        return ns.startswith("{") and ns.endswith("}") and len(ns) > 2 and "}" not in ns[1:-1]

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
    def wake(self) -> str:
        """A list of tokens pushed with each enqueue: idle workers block on it, not on the request
        lists, so no request (whatever its size) is ever handed over by a blocking pop."""
        return f"{self.namespace}:wake"

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

    def cache_entry(self, fingerprint: str, kind: str, text: str) -> str:
        """Where the query cache keeps one text's vector: under the model's fingerprint (a new
        model, export or prefix never meets old vectors) and a hash of the text (never the text)."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"{self.namespace}:cache:{fingerprint}:{kind}:{digest}"


def new_request_id() -> str:
    """A fresh request id (uuid4, 32 lowercase hex digits)."""
    return uuid.uuid4().hex


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One producer request: texts of one kind, answered by one reply.

    ``deadline_ms`` and ``sent_ms`` are milliseconds on the Redis server's clock (its ``TIME``),
    so producer and worker hosts may disagree about the time without effect. ``truncate`` says
    what to do with a text longer than the model's token window: cut it as the model does (True),
    refuse it with ``text_too_long`` (False), or the worker's default (None).
    """

    id: str
    kind: str
    texts: list[str]
    deadline_ms: int
    sent_ms: int
    truncate: bool | None = None
    version: int = PROTOCOL_VERSION
    model: str | None = None
    """The model the producer expects (a served name, or the model's id or path): a worker that
    serves another refuses the request with ``model_mismatch``. None: whatever serves the queue."""
    fingerprint: str | None = None
    """The exact fingerprint the producer expects (a pinned call or client); None: any."""

    @classmethod
    def new(
        cls,
        kind: str,
        texts: Sequence[str],
        *,
        now_ms: int,
        timeout_s: float,
        truncate: bool | None = None,
        model: str | None = None,
        fingerprint: str | None = None,
    ) -> Request:
        """A fresh request sent at ``now_ms`` (Redis time) whose deadline is ``timeout_s`` later:
        built once, when it is sent, by every producer (clients and the bulk job alike)."""
        return cls(
            id=new_request_id(),
            kind=kind,
            texts=list(texts),
            deadline_ms=deadline_ms(now_ms, timeout_s),
            sent_ms=now_ms,
            truncate=truncate,
            model=model,
            fingerprint=fingerprint,
        )

    def pack(self) -> bytes:
        """The msgpack map a producer RPUSHes onto the request queue (``id`` early, so that even
        a request whose texts cannot be decoded can be answered)."""
        body: dict[str, Any] = {
            "v": self.version,
            "id": self.id,
            "kind": self.kind,
            "deadline_ms": self.deadline_ms,
            "sent_ms": self.sent_ms,
        }
        if self.truncate is not None:
            body["truncate"] = self.truncate
        if self.model is not None:
            body["model"] = self.model
        if self.fingerprint is not None:
            body["fingerprint"] = self.fingerprint
        body["texts"] = self.texts
        return msgpack.packb(body, use_bin_type=True)

    @property
    def digest(self) -> str:
        """What the reply echoes so a producer can tell its answer from another request's."""
        return texts_digest(self.kind, self.texts)


def texts_digest(kind: str, texts: Sequence[str]) -> str:
    """A short hash of a request's kind and texts (16 hex digits)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(kind.encode())
    for text in texts:
        h.update(b"\x00")
        h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def build_requests(
    texts: Sequence[str],
    kind: str,
    *,
    max_batch: int,
    timeout: float,
    now_ms: int,
    truncate: bool | None = None,
) -> list[Request]:
    """Split texts into requests of at most ``max_batch`` texts, all sent at ``now_ms`` (the Redis
    clock) with one deadline ``timeout`` seconds later. The caller reassembles the replies in
    this order."""
    items = list(texts)
    return [
        Request.new(kind, chunk, now_ms=now_ms, timeout_s=timeout, truncate=truncate)
        for chunk in split(items, max_batch)
    ]


def split(items: Sequence[Any], max_batch: int) -> list[list[Any]]:
    """``items`` in consecutive chunks of at most ``max_batch``: one large call never fills a
    worker's batch by itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    return [list(items[i : i + max_batch]) for i in range(0, len(items), max_batch)]


def peek_id(raw: bytes) -> str | None:
    """The request id inside raw request bytes, or None if it has no usable one.

    Works on requests whose texts do not decode (invalid UTF-8, nesting too deep) and on the
    first bytes of one too large to read: the id is looked for in the top-level map only, then,
    if the map cannot be walked, as the ``id`` key's 32-character string anywhere.
    """
    unpacker = msgpack.Unpacker(raw=True, max_buffer_size=max(len(raw), 1))
    unpacker.feed(raw)
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == b"id":
                rid = unpacker.unpack()
                return _valid_id(rid)
            unpacker.skip()
    except Exception:  # msgpack raises several unrelated types for bad input
        pass
    at = raw.find(_ID_MARK)
    return _valid_id(raw[at + len(_ID_MARK) : at + len(_ID_MARK) + 32]) if at >= 0 else None


_ID_MARK = b"\xa2id\xd9\x20"
"""msgpack for the key ``id`` followed by the header of a 32-byte string."""


def _valid_id(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and ID_PATTERN.match(value) else None


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
    max_bytes: int = 0
    """Largest raw request accepted, checked before decoding; 0: sized from the text limits."""

    @property
    def byte_cap(self) -> int:
        """``max_bytes``, or what the largest valid request can take (4 UTF-8 bytes a character,
        plus room for the map)."""
        return self.max_bytes or default_max_bytes(self.max_texts, self.max_text_chars)


def default_max_bytes(max_texts: int, max_text_chars: int) -> int:
    """Bytes the largest valid request of these limits can need."""
    return max_texts * (max_text_chars * 4 + 8) + 1024


def _describe(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(raw: bytes, limits: Limits) -> Request:
    """Decode and validate one raw request, or raise ``Rejected`` with a message a person can act on.

    The size is checked before anything is decoded, then the id, so that every later refusal can
    be sent back to its producer; a request that does not decode is answered when its id can be
    recovered. Fields echoed in messages are shortened.
    """
    if len(raw) > limits.byte_cap:
        raise Rejected(
            "request_too_large", too_large_message(len(raw), limits.byte_cap), peek_id(raw[:PEEK_BYTES])
        )
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise Rejected(
            "invalid_msgpack",
            f"request does not decode ({type(exc).__name__}: {shorten(str(exc))}): it must be a msgpack "
            "map whose strings are valid UTF-8",
            peek_id(raw),
        ) from None
    if not isinstance(obj, dict):
        raise Rejected("invalid_request", f"request must be a msgpack map, got {_describe(obj)}")

    request_id = obj.get("id")
    if not isinstance(request_id, str) or not ID_PATTERN.match(request_id):
        raise Rejected(
            "invalid_id",
            f"field 'id' must be 32 lowercase hex characters (uuid4().hex), got {shorten(request_id)}",
        )

    def reject(code: str, message: str) -> Rejected:
        return Rejected(code, message, request_id)

    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        hint = (
            " (v1 producers sent deadlines on their own clock: upgrade the producer)" if version == 1 else ""
        )
        raise reject(
            "unsupported_version",
            f"protocol version {shorten(version)} is not supported; "
            f"this worker speaks v{PROTOCOL_VERSION}{hint}",
        )
    kind = obj.get("kind")
    if kind not in KINDS:
        raise reject("invalid_kind", f"field 'kind' must be 'query' or 'passage', got {shorten(kind)}")

    deadline_ms = obj.get("deadline_ms")
    if not _is_int(deadline_ms):
        raise reject(
            "invalid_request",
            f"field 'deadline_ms' must be an integer (Redis TIME in ms), got {shorten(deadline_ms)}",
        )
    sent_ms = obj.get("sent_ms", deadline_ms)
    if not _is_int(sent_ms):
        raise reject(
            "invalid_request",
            f"field 'sent_ms' must be an integer (Redis TIME in ms), got {shorten(sent_ms)}",
        )
    truncate = obj.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise reject("invalid_request", f"field 'truncate' must be true or false, got {shorten(truncate)}")
    pins: dict[str, str | None] = {}
    for name in ("model", "fingerprint"):
        value = obj.get(name)
        if value is not None and (not isinstance(value, str) or not value or len(value) > ECHO_CHARS):
            raise reject(
                "invalid_request", f"field {name!r} must be a non-empty string (a pin), got {shorten(value)}"
            )
        pins[name] = value

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
        if is_blank(text):
            raise reject(
                "empty_text",
                f"text {i} is empty or only whitespace or invisible characters (NUL, BOM, zero-width)",
            )
        if len(text) > limits.max_text_chars:
            raise reject(
                "text_too_long",
                f"text {i} has {len(text)} characters; the limit is {limits.max_text_chars} "
                "(EMBED_MAX_TEXT_CHARS). Split the text into chunks; it is not cut silently",
            )
    assert isinstance(deadline_ms, int) and isinstance(sent_ms, int)  # checked above
    return Request(
        id=request_id,
        kind=kind,
        texts=texts,
        deadline_ms=deadline_ms,
        sent_ms=sent_ms,
        truncate=truncate,
        model=pins["model"],
        fingerprint=pins["fingerprint"],
    )


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A worker's answer to one request: vectors, or an error code and message.

    ``truncated`` lists the indexes of texts cut to the model's token window (as the model
    itself cuts them); ``digest`` is the request's ``texts_digest``, so that a producer never
    takes another request's vectors for its own.
    """

    id: str
    vectors: np.ndarray | None = None
    code: str | None = None
    message: str | None = None
    queue_ms: float = 0.0
    encode_ms: float = 0.0
    batch_size: int = 0
    worker: str = ""
    truncated: tuple[int, ...] = ()
    digest: str = ""
    tokens: tuple[int, ...] = ()
    """Tokens each text was encoded with (after any cut), when the model has a tokenizer."""
    model: str = ""
    """The served name of the model that answered (``EMBED_SERVED_NAME``); "" from old workers."""
    fingerprint: str = ""
    """What identifies the answering model's vectors (``Heartbeat.fingerprint``); "" from old
    workers and custom encoders without one."""

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
        if self.model:
            body["model"] = self.model
        if self.fingerprint:
            body["fingerprint"] = self.fingerprint
        if self.vectors is not None:
            matrix = np.ascontiguousarray(self.vectors, dtype=DTYPE)
            body["count"], body["dim"] = matrix.shape
            body["vectors"] = matrix.tobytes()
            body["truncated"] = list(self.truncated)
            body["digest"] = self.digest
            body["tokens"] = list(self.tokens)
        else:
            body["code"] = self.code
            body["message"] = self.message
        return msgpack.packb(body, use_bin_type=True)


def unpack_reply(raw: bytes) -> Reply:
    """Decode a reply map; a malformed one raises ``ValueError`` naming what is wrong."""
    try:
        obj = msgpack.unpackb(raw, raw=False)
    except Exception as exc:
        raise ValueError(f"reply does not decode: {type(exc).__name__}: {shorten(str(exc))}") from None
    if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION:
        raise ValueError(f"unexpected reply: {shorten(obj)}")
    try:
        common: dict[str, Any] = {
            "id": str(obj.get("id", "")),
            "queue_ms": float(obj.get("queue_ms", 0.0)),
            "encode_ms": float(obj.get("encode_ms", 0.0)),
            "batch_size": int(obj.get("batch_size", 0)),
            "worker": str(obj.get("worker", "")),
            "model": str(obj.get("model", "")),
            "fingerprint": str(obj.get("fingerprint", "")),
        }
        if obj.get("ok"):
            count, dim = int(obj["count"]), int(obj["dim"])
            vectors = np.frombuffer(obj["vectors"], dtype=DTYPE)
            if vectors.size != count * dim:
                raise ValueError(f"reply holds {vectors.size} floats, expected {count} x {dim}")
            truncated = tuple(int(i) for i in obj.get("truncated", ()))
            return Reply(
                vectors=vectors.reshape(count, dim),
                truncated=truncated,
                digest=str(obj.get("digest", "")),
                tokens=tuple(int(n) for n in obj.get("tokens", ())),
                **common,
            )
        return Reply(code=str(obj.get("code")), message=str(obj.get("message")), **common)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed reply: {type(exc).__name__}: {shorten(str(exc))}") from None


# --- heartbeats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """What a live worker says about itself at ``<ns>:heartbeat:<id>`` (msgpack, with an expiry).

    Written by the worker's heartbeat thread; read by ``embedq status``, ``embedq-worker health``,
    the bulk job (which model and prefix answered it) and the API's health check. Times are the
    Redis server's, in ms.
    """

    worker: str
    model: str = ""
    backend: str = "torch"
    dim: int = 0
    prefixes: dict[str, str] = field(default_factory=dict)
    normalized: bool = True
    queue: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """threads, device, max_batch, bulk_max_batch, batch_policy, batch_wait_ms, max_tokens, truncate."""
    batches: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    last_minute: dict[str, float] = field(default_factory=dict)
    host: str = ""
    pid: int = 0
    started_ms: int | None = None
    beat_ms: int | None = None
    maxmemory_policy: str | None = None
    fingerprint: str = ""
    """What identifies this worker's vectors (model, weights or export, backend, prefixes, window):
    producers use the query cache only while every live worker reports the same one."""
    served_name: str = ""
    """The name producers and the OpenAI ``model`` field ask for (``EMBED_SERVED_NAME``)."""
    cache: dict[str, Any] | None = None
    """The query cache as this worker sees it (kinds, ttl_s, writes, hits, misses), or None when off."""
    redis_trouble: dict[str, Any] | None = None
    """The Redis error the worker is waiting out (code, message, for_s, count), or None."""

    def pack(self) -> bytes:
        """The msgpack map stored at the heartbeat key."""
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def unpack(cls, raw: bytes | str) -> Heartbeat:
        """A heartbeat from its stored bytes; fields it does not know are ignored (a newer
        worker), missing ones take their defaults (an older one). ``ValueError`` for garbage."""
        try:
            obj = msgpack.unpackb(raw.encode() if isinstance(raw, str) else raw, raw=False)
        except Exception as exc:
            raise ValueError(f"heartbeat does not decode: {shorten(str(exc))}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("worker"), str):
            raise ValueError(f"not a heartbeat: {shorten(obj)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


# --- query cache ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One cached vector (msgpack ``{"v": float32 bytes, "t": tokens}``), written by workers into
    the cache Redis (``EMBED_CACHE_URL``) and read by producers, which answer it without the queue."""

    vector: np.ndarray
    tokens: int = 0

    def pack(self) -> bytes:
        """The stored bytes."""
        data = np.ascontiguousarray(self.vector, dtype=DTYPE).tobytes()
        return msgpack.packb({"v": data, "t": int(self.tokens)}, use_bin_type=True)

    @classmethod
    def unpack(cls, raw: bytes, dim: int) -> CacheEntry:
        """An entry from its stored bytes; ``ValueError`` unless it holds one ``dim``-float vector
        (a cache must never answer with something else)."""
        try:
            obj = msgpack.unpackb(raw, raw=False)
        except Exception as exc:
            raise ValueError(f"cache entry does not decode: {shorten(str(exc))}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("v"), bytes) or not _is_int(obj.get("t", 0)):
            raise ValueError(f"not a cache entry: {shorten(obj)}")
        data: bytes = obj["v"]
        if dim <= 0 or len(data) != dim * DTYPE.itemsize:
            raise ValueError(f"cache entry holds {len(data)} bytes, not {dim} float32 values")
        vector = np.frombuffer(data, dtype=DTYPE).astype(np.float32)
        if not np.isfinite(vector).all():
            raise ValueError("cache entry holds non-finite values")
        return cls(vector, int(obj.get("t", 0)))
