"""One embedding call's bookkeeping, shared by the sync and asyncio clients.

A call is one or more requests (texts split by max-batch). The clients only do I/O: push
``payloads()`` (all of them, or a window at a time: each request is built when it is sent),
then pop from ``pending_keys()`` until ``done``; this class checks each reply and puts the
vectors back in input order. ``timeout``
bounds how long the call may go without progress: each request's deadline is ``timeout`` after
it is sent, and every reply restarts the clock, so a call of any length works at the default
timeout as long as the workers keep answering it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence

import numpy as np
import redis.exceptions

from . import defaults
from .cache import Hits
from .errors import (
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingTimeout,
    EmbedqError,
    InvalidInput,
    QueueFull,
)
from .flow import FlowControl
from .protocol import KINDS, WAKE_TOKENS_MAX, Keys, Reply, Request, shorten, unpack_reply
from .topology import CLUSTER_UNSUPPORTED, clustered

MIN_WAIT = 0.001
"""Below this many seconds left a call counts as timed out (BLPOP's 0 would mean 'forever')."""

ENQUEUE_SCRIPT = """
local depth = redis.call('LLEN', KEYS[1])
local limit = tonumber(ARGV[1])
if limit > 0 and depth >= limit then return -1 - depth end
local n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('RPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], -WAKE_MAX, -1)
return n
""".replace("WAKE_MAX", str(WAKE_TOKENS_MAX))
"""RPUSH onto the request list (KEYS[1]) unless it already holds ``limit`` requests (then
-1 - depth), and leave a token on the wake list (KEYS[2]) for an idle worker: one round trip."""
PUSH_SLICE = defaults.PUSH_SLICE
WINDOW = defaults.WINDOW
"""Requests of one call queued or being encoded at once (``embed`` streams the rest as replies
come): a 5,000-text call neither floods the queue nor expires while it waits its turn."""


def push_slices(payloads: Sequence[bytes], limit: int | None) -> Iterator[list[bytes | int]]:
    """Script arguments for pushing ``payloads``: the limit, then up to PUSH_SLICE payloads."""
    for i in range(0, len(payloads), PUSH_SLICE):
        yield [limit or 0, *payloads[i : i + PUSH_SLICE]]


def check_pushed(result: int, queue: str, limit: int | None) -> None:
    """Raise ``QueueFull`` if the enqueue script refused."""
    if result < 0:
        raise QueueFull(queue, -1 - result, limit or 0)


def check_texts(texts: Sequence[str], kind: str) -> list[str]:
    """The texts as a list, or ``InvalidInput`` naming the first bad one (checked before sending,
    so a bad argument never becomes a request)."""
    if isinstance(texts, (str, bytes)):
        raise InvalidInput("texts must be a sequence of strings, not a single string: wrap it in a list")
    if kind not in KINDS:
        raise InvalidInput(f"kind must be 'query' or 'passage', got {shorten(kind)}")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInput(f"text {i} is {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"text {i} cannot be encoded as UTF-8 at character {exc.start} ({exc.reason}): "
                "a lone surrogate, usually from text decoded with errors='surrogateescape'"
            ) from None
    return items


def check_timeout(timeout: float) -> float:
    """A positive finite number of seconds, or ``ValueError``."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
    return float(timeout)


class Call:
    """The requests of one embedding call and the replies gathered so far.

    A call of questions that fits one request (``max_batch`` texts) goes to the online lane, the
    workers' first priority. Everything else (passages, and calls of several requests) goes to
    the background lane, which workers serve when no question waits (and for a guaranteed
    share while questions never stop): a chatbot's questions never wait behind its documents.
    A background call is sent longest texts first, a window of requests at a time, each request
    sized by what the replies say (``FlowControl``); the vectors come back in input order. Each
    ``Request`` is built once, when it is sent, with the deadline it travels with.
    """

    def __init__(
        self,
        texts: Sequence[str],
        kind: str,
        *,
        keys: Keys,
        max_batch: int,
        timeout: float,
        truncate: bool | None = None,
        model: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        if truncate is not None and not isinstance(truncate, bool):
            raise InvalidInput(f"truncate must be True, False or None, got {shorten(truncate)}")
        for name, pin in (("model", model), ("fingerprint", fingerprint)):
            if pin is not None and (not isinstance(pin, str) or not pin):
                raise InvalidInput(f"{name} must be a non-empty string or None, got {shorten(pin)}")
        self.keys = keys
        self.model = model
        """The model this call expects (a served name or the model's id): workers of another refuse."""
        self.fingerprint = fingerprint
        """The fingerprint this call's vectors come from: the pin it was given, else the first
        reply's, which every later reply must match (a call never mixes two models)."""
        self.pinned = fingerprint is not None
        self.served_by = ""
        """The served name of the model that answered (from the replies)."""
        self.timeout = check_timeout(timeout)
        self.texts = check_texts(texts, kind)
        self.kind = kind
        self.truncate = truncate
        self.max_batch = max_batch
        self.lane = "online" if kind == "query" and len(self.texts) <= max_batch else "bulk"
        """Which list the requests go to: ``online`` (a question) or ``bulk`` (the background)."""
        self.flow = FlowControl.for_timeout(self.timeout, max_batch=max_batch)
        self.started = time.monotonic()
        self.progress_at = self.started
        """When the call last made progress (sent, or got a reply): its timeout counts from here."""
        self.cached = Hits()
        """Texts the query cache answered (by index into ``texts``): they are never sent."""
        self.requests: list[Request] = []
        """The requests sent so far, in order (built when sent)."""
        self.chunks: list[list[int]] = []
        """Indexes into ``texts`` of each sent request, in ``requests`` order."""
        self.replies: list[Reply | None] = []
        """Each sent request's reply once answered: timings, batch size and worker, for monitoring."""
        self._pending: dict[str, int] = {}
        """Reply key -> slot, of the requests sent and not yet answered."""
        self._plan(range(len(self.texts)))

    def _plan(self, todo: Sequence[int]) -> None:
        order = list(todo)
        if self.lane == "bulk":  # longest first: similar lengths batch together (less padding)
            order.sort(key=lambda i: -len(self.texts[i]))
        self._todo = order
        """Indexes into ``texts`` still to send, in sending order."""
        self._cursor = 0

    @property
    def queue(self) -> str:
        """The request list this call's requests go to."""
        return self.keys.queue if self.lane == "online" else self.keys.bulk

    def use_cached(self, hits: Hits) -> None:
        """Take the query cache's answers before anything is sent: only the rest becomes requests.
        The call's clock starts again here: however long the lookup took, the queue gets the
        whole timeout (a slow cache must never turn into a queue timeout)."""
        if self.requests:
            raise RuntimeError("use_cached after sending")
        self.progress_at = time.monotonic()
        if not len(hits):
            return
        self.cached = hits
        if self.fingerprint is None and hits.fingerprint:
            self.fingerprint = hits.fingerprint  # the queue's replies must be of the cached model
        self._plan([i for i in range(len(self.texts)) if i not in hits.vectors])

    @property
    def sent(self) -> int:
        """Requests pushed so far (they go in order)."""
        return len(self.requests)

    @property
    def room(self) -> int:
        """Requests that may be sent now: the window's free places while texts are left."""
        if not self.unsent:
            return 0
        if self.lane == "online":
            return 1
        return max(0, self.flow.window - self.in_flight)

    def payloads(self, now_ms: int, limit: int | None = None) -> list[bytes]:
        """The next requests not yet sent (all, or at most ``limit``), built now and packed in
        input order for one RPUSH. ``now_ms`` is Redis time now; each deadline is the latest the
        call may still be waiting for that request: its timeout (what is left of it, at the first
        send) for each request in flight up to and including it."""
        if self.requests:  # a later send is progress: a whole timeout again
            self.progress_at = time.monotonic()
            left = self.timeout
        else:
            left = self.timeout - (time.monotonic() - self.progress_at)
        out: list[bytes] = []
        while self.unsent and (limit is None or len(out) < limit):
            size = self.max_batch if self.lane == "online" else self.flow.texts_per_request()
            chunk = self._todo[self._cursor : self._cursor + size]
            self._cursor += len(chunk)
            # the call waits as long as each reply comes within its timeout of the one before:
            # the k-th request in flight is waited for up to k timeouts (the first: what is left)
            ahead = self.in_flight  # this call's requests in flight before this one
            request = Request.new(
                self.kind,
                [self.texts[i] for i in chunk],
                now_ms=now_ms,
                timeout_s=left + ahead * self.timeout,
                truncate=self.truncate,
                model=self.model,
                fingerprint=self.fingerprint if self.pinned else None,
            )
            key = self.keys.reply(request.id)
            self._pending[key] = len(self.requests)
            self.requests.append(request)
            self.chunks.append(chunk)
            self.replies.append(None)
            out.append(request.pack())
        return out

    @property
    def unsent(self) -> int:
        """Texts not yet sent."""
        return len(self._todo) - self._cursor

    @property
    def in_flight(self) -> int:
        """Requests pushed and not yet answered."""
        return len(self._pending)

    def pending_keys(self) -> list[str]:
        """Reply keys of sent requests still unanswered."""
        return list(self._pending)

    @property
    def done(self) -> bool:
        """True once every request has its vectors."""
        return not self.unsent and not self._pending

    def remaining(self) -> float:
        """Seconds left before the call's timeout (since its last progress); raises
        ``EmbeddingTimeout`` when none are, saying how much of the call was answered."""
        left = self.timeout - (time.monotonic() - self.progress_at)
        if left < MIN_WAIT:
            answered = sum(1 for r in self.replies if r is not None)
            reason = ""
            if answered:
                reason = (
                    f"{answered} of {len(self.requests)} requests sent were answered, then none for "
                    f"{self.timeout:g}s: the workers stopped or fell behind (embedq status)"
                )
            raise EmbeddingTimeout(
                time.monotonic() - self.started, self.keys.queue, len(self.pending_keys()), reason=reason
            )
        return left

    def accept(self, key: bytes | str, raw: bytes) -> None:
        """Take one popped reply; an error reply raises ``EmbeddingError`` (``EmbeddingTimeout``
        when the workers gave up on the deadline)."""
        name = key.decode() if isinstance(key, bytes) else key
        slot = self._pending.get(name)
        if slot is None:  # not ours, or answered already: BLPOP only waits on pending keys
            return
        request = self.requests[slot]
        try:
            reply = unpack_reply(raw)
        except ValueError as exc:
            raise EmbeddingError("bad_reply", str(exc), request.id) from None
        if not reply.ok:
            if reply.code == "deadline_exceeded":
                raise EmbeddingTimeout(
                    time.monotonic() - self.started,
                    self.keys.queue,
                    len(self.pending_keys()),
                    reason=f"a worker gave up on it: {reply.message}",
                )
            raise EmbeddingError(reply.code or "error", reply.message or "", reply.id)
        self._check_model(reply)
        if reply.digest and reply.digest != request.digest:
            raise EmbeddingError(
                "bad_reply",
                f"the reply on {name!r} answers other texts than this request's: two producers used "
                "the same request id",
                reply.id,
            )
        expected = len(request.texts)
        if reply.vectors is None or len(reply.vectors) != expected:
            raise EmbeddingError(
                "bad_reply",
                f"worker returned {0 if reply.vectors is None else len(reply.vectors)} "
                f"vectors for {expected} texts",
                reply.id,
            )
        self.replies[slot] = reply
        self._pending.pop(name, None)
        self.progress_at = time.monotonic()
        self.flow.on_reply(reply.queue_ms, reply.encode_ms, reply.batch_size)

    @property
    def pin(self) -> str | None:
        """The fingerprint this call is pinned to, or None."""
        return self.fingerprint if self.pinned else None

    def _check_model(self, reply: Reply) -> None:
        """Every vector of a call comes from one model: the pinned one, else the first reply's."""
        if not reply.fingerprint:  # a worker older than model identity (or a custom encoder)
            if self.pinned or self.model is not None:
                raise EmbeddingError(
                    "model_unknown",
                    f"worker {reply.worker!r} does not say which model answered, and this call expects "
                    f"{self.model or self.fingerprint!r}: upgrade the workers (embedq 0.2 replies name "
                    "their model)",
                    reply.id,
                )
            return
        if self.fingerprint is None:
            self.fingerprint, self.served_by = reply.fingerprint, reply.model
            return
        if reply.fingerprint != self.fingerprint:
            raise EmbeddingError(
                "model_mismatch",
                f"worker {reply.worker!r} answered with model {reply.model!r} (fingerprint "
                f"{reply.fingerprint}), but this call's vectors come from fingerprint {self.fingerprint}"
                f"{' (pinned)' if self.pinned else ''}: two models serve queue {self.keys.queue!r}. No "
                "mixed result is returned; see embedq status",
                reply.id,
            )
        self.served_by = self.served_by or reply.model

    @property
    def tokens(self) -> int:
        """Tokens the worker encoded for the whole call (after any cut; cached texts count what
        they took when encoded): 0 if the model reports none."""
        sent = sum(sum(r.tokens) for r in self.replies if r is not None)
        return sent + sum(self.cached.tokens.values())

    @property
    def truncated(self) -> list[int]:
        """Indexes (into the call's texts) of the texts the worker cut to the model's window."""
        out: list[int] = []
        for chunk, reply in zip(self.chunks, self.replies, strict=False):
            if reply is not None:
                out.extend(chunk[t] for t in reply.truncated)
        return out

    def result(self) -> np.ndarray:
        """All vectors as one float32 matrix, rows in input order."""
        parts = [r.vectors for r in self.replies if r is not None and r.vectors is not None]
        dims = {p.shape[1] for p in parts} | {len(v) for v in self.cached.vectors.values()}
        if len(dims) > 1:
            raise EmbeddingError(
                "bad_reply",
                f"this call's vectors have {sorted(dims)} dimensions: the model changed during it",
            )
        if not dims:
            return np.zeros((0, 0), dtype=np.float32)
        out = np.empty((len(self.texts), dims.pop()), dtype=np.float32)
        for i, vector in self.cached.vectors.items():
            out[i] = vector
        if parts:
            out[[i for chunk in self.chunks for i in chunk]] = np.vstack(parts)
        return out


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Turn redis-py exceptions into embedq ones that say which Redis failed."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise EmbeddingConnectionError(
            f"cannot talk to Redis at {where}: {exc}. Is redis-server running and REDIS_URL right?"
        ) from exc
    except redis.exceptions.RedisError as exc:
        if clustered(exc):
            raise EmbedqError(f"Redis at {where}: {CLUSTER_UNSUPPORTED}") from exc
        raise EmbedqError(f"Redis at {where} refused a command: {shorten(str(exc))}") from exc
