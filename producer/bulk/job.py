"""The bulk job: embed every document of an input file into an output directory, resumably.

Two passes over the input, both streaming. The first checks every record, writes the ids (row
order) and the errors file, and hashes the input. The second sends the documents, a chunk at a
time, as requests on the workers' low-priority bulk list (``<ns>:bulk``), keeping ``inflight``
requests queued so that a worker never idles while the job has work, and writes each finished
chunk into the matrix before recording it done. A worker takes bulk requests only when no
online request waits, so the chatbot's queries never queue behind the job.

The same function runs inside an RQ worker (``embed_file``, through ``embedq bulk submit``) and
in the foreground (``embedq bulk run``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import redis

from ..clock import RedisClock
from ..protocol import DEFAULT_QUEUE, KINDS, Heartbeat, Keys, Request, new_request_id, unpack_reply
from .output import ERRORS, IDS, MANIFEST, TRUNCATED, VECTORS, OutputDir, OutputError, VectorFile
from .plan import Chunk, chunk_count, chunked, pack
from .reader import BadDocument, BulkInputError, Document, DocumentReader, InputSpec

log = logging.getLogger("embedq.bulk")

RQ_QUEUE = "embed-bulk"
"""The RQ queue bulk jobs go to (``embedq bulk worker`` serves it)."""
BLOCK_S = 2.0
"""Longest single wait for a reply, so progress and deadlines are looked at regularly."""
PROGRESS_EVERY_S = 1.0
"""Most often progress is reported (RQ job meta, a progress bar)."""
BATCH_TIMES_KEPT = 10_000
"""Recent bulk batches whose encode time the summary describes: how long an online request may
wait behind one."""
QUIET_S = 10.0
"""Without a reply for this long, progress says whether any worker is live to answer."""
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
SPLIT_CODES = ("encode_failed", "worker_died", "text_too_long")
"""Error replies after which a multi-text request is retried text by text, to find the one bad
document; the others still get their vectors."""


class BulkError(RuntimeError):
    """The job cannot go on; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class BulkOptions:
    """How a bulk job reads its input and sends its requests. JSON-serializable (RQ job args)."""

    format: str | None = None
    id_field: str = "id"
    text_field: str = "text"
    kind: str = "passage"
    batch_size: int = 8
    """Most texts per bulk request (one worker batch); at most the workers' EMBED_BULK_MAX_BATCH."""
    max_batch_chars: int = 2048
    """Most characters per bulk request: long documents go fewer to a batch, which bounds how long
    an online request can wait behind one."""
    chunk_size: int = 1024
    """Documents per chunk, the unit of progress and of resuming."""
    inflight: int = 16
    """Bulk requests queued or being encoded at once: enough to keep every worker busy."""
    max_chars: int = 8192
    """Longest text accepted (the workers' EMBED_MAX_TEXT_CHARS); longer ones are bad documents."""
    truncate: bool = True
    """A document longer than the model's token window: cut it as the model does and list it in
    ``truncated.jsonl`` (True), or stop the job naming it (False, ``--no-truncate``)."""
    fail_fast: bool = False
    """Stop at the first bad document instead of listing it in the errors file."""
    overwrite: bool = False
    """Discard an earlier job's output in the directory instead of refusing or resuming."""
    queue: str = DEFAULT_QUEUE
    """The workers' online queue name; bulk requests go to its namespace's bulk list."""
    request_timeout: float = 3600.0
    """Seconds one bulk request may wait for a worker (it waits behind all online traffic)."""
    redis_url: str | None = None
    """Redis of the workers; None: the RQ job's own connection."""

    IDENTITY = (
        "format",
        "id_field",
        "text_field",
        "kind",
        "batch_size",
        "max_batch_chars",
        "chunk_size",
        "max_chars",
        "truncate",
    )
    """The options that decide the output's bytes: a resumed job must have the same."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "max_batch_chars", "chunk_size", "inflight", "max_chars", "request_timeout")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def spec(self) -> InputSpec:
        """How the input is read."""
        return InputSpec(
            format=self.format, id_field=self.id_field, text_field=self.text_field, max_chars=self.max_chars
        )

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BulkOptions:
        """Options from a JSON object; unknown names are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown bulk option(s) {unknown}; known: {sorted(known)}")
        return cls(**obj)


@dataclass
class Progress:
    """Where a job stands; what ``embedq bulk status`` shows (RQ job meta ``progress``)."""

    phase: str = "starting"
    """starting, scanning, encoding, done."""
    done: int = 0
    """Documents embedded, including those of chunks finished by an earlier run."""
    total: int = 0
    errors: int = 0
    chunks_done: int = 0
    chunks_total: int = 0
    rate: float = 0.0
    """Documents per second in this run."""
    eta_s: float | None = None
    elapsed_s: float = 0.0
    updated: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """As a JSON object."""
        return asdict(self)


@dataclass
class _Pending:
    request: Request
    positions: list[int]
    sent: float = field(default_factory=time.monotonic)
    """When it was sent, on this host's monotonic clock (the job's own patience)."""


@dataclass(frozen=True)
class _Model:
    name: str
    dim: int
    prefix: str
    normalized: bool


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class BulkJob:
    """One run of a bulk job over one input and one output directory."""

    def __init__(
        self,
        input_path: str | Path,
        output_dir: str | Path,
        options: BulkOptions,
        client: redis.Redis,
        *,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.input = Path(input_path)
        self.out = OutputDir(output_dir)
        self.options = options
        self.redis = client
        self.keys = Keys(options.queue)
        self.on_progress = on_progress
        self.progress = Progress()
        self.started = time.monotonic()
        self.encoded_this_run = 0
        self._reported = 0.0
        self._encode_started = 0.0
        self._models: dict[str, _Model | None] = {}
        self._batch_ms: deque[float] = deque(maxlen=BATCH_TIMES_KEPT)
        self._encode_ms_total = 0.0
        self._last_reply = time.monotonic()
        self.model: _Model | None = None
        self.clock = RedisClock()
        self._truncated: list[int] = []
        """Rows of the chunk being encoded that the workers cut to the model's token window."""

    # --- the whole job ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Embed the input (or resume, or return at once when already complete); a summary."""
        with self.out.locked():
            return self._run()

    def _run(self) -> dict[str, Any]:
        self._report("scanning", force=True)
        reader = DocumentReader(self.input, self.options.spec)
        identity = {name: getattr(self.options, name) for name in BulkOptions.IDENTITY} | {
            "format": reader.format
        }
        state = self.out.load_state()
        if state is not None and self.options.overwrite:
            log.info("--overwrite: discarding the earlier output in %s", self.out.path)
            self.out.clear()
            state = None
        try:
            rows, errors = self._scan(reader)
        except BaseException:
            self._discard_scan()
            raise
        if state is not None and (
            state["input"]["sha256"] != reader.sha256 or state["options"] != identity or state["rows"] != rows
        ):
            self._discard_scan()
            raise OutputError(
                f"{self.out.path} holds the output of another input or other options "
                f"(input {state['input']['path']}, sha256 {state['input']['sha256'][:12]}..., options "
                f"{state['options']}); use another output directory, or --overwrite to replace it"
            )
        self._install_scan()
        if state is None:
            state = {
                "input": {"path": str(self.input.resolve()), "sha256": reader.sha256, "bytes": reader.size},
                "options": identity,
                "rows": rows,
                "errors": errors,
                "chunks": chunk_count(rows, self.options.chunk_size),
                "done": [],
                "model": None,
                "created": now_iso(),
                "runs": 0,
                "complete": False,
            }
        state["runs"] += 1
        self.out.save_state(state)
        self.progress.total, self.progress.errors = rows, errors
        self.progress.chunks_total = state["chunks"]
        if state["complete"]:
            log.info("%s is already complete: nothing to do", self.out.path)
            self.progress.done, self.progress.chunks_done = rows, state["chunks"]
            self._report("done", force=True)
            return self._summary(state)
        if state["model"] is not None:
            self.model = _Model(**state["model"])
        self._encode_all(state, reader.sha256)
        self._finish(state)
        return self._summary(state)

    def _scan(self, reader: DocumentReader) -> tuple[int, int]:
        """Check every record; write the ids and the errors beside their final names."""
        rows = errors = 0
        with (
            open(self._scan_file(IDS), "w", encoding="utf-8") as ids,
            open(self._scan_file(ERRORS), "w", encoding="utf-8") as bad,
        ):
            for doc in reader:
                if isinstance(doc, BadDocument):
                    if self.options.fail_fast:
                        raise BulkInputError(
                            f"{self.input.name} line {doc.line}: {doc.message} ({doc.code}; id {doc.id!r})"
                        )
                    bad.write(_json_line(doc.to_json()))
                    errors += 1
                else:
                    ids.write(_json_line(doc.id))
                    rows += 1
                if (rows + errors) % 1000 == 0:
                    self.progress.total, self.progress.errors = rows, errors
                    self._report("scanning")
        log.info("%s: %d document(s) to embed, %d bad (see %s)", self.input, rows, errors, ERRORS)
        return rows, errors

    def _scan_file(self, name: str) -> Path:
        return self.out.file(name + ".scan")

    def _install_scan(self) -> None:
        for name in (IDS, ERRORS):
            self._scan_file(name).replace(self.out.file(name))

    def _discard_scan(self) -> None:
        for name in (IDS, ERRORS):
            self._scan_file(name).unlink(missing_ok=True)

    def _documents(self, reader: DocumentReader) -> Iterator[Document]:
        for doc in reader:
            if isinstance(doc, Document):
                yield doc

    def _encode_all(self, state: dict[str, Any], sha256: str) -> None:
        size = self.options.chunk_size
        rows = state["rows"]
        done = set(state["done"])
        self.progress.chunks_done = len(done)
        self.progress.done = sum(min(size, rows - i * size) for i in done)
        if done:
            log.info("resuming: %d of %d chunk(s) already done", len(done), state["chunks"])
        if done and not self.out.file(VECTORS).exists():
            raise OutputError(
                f"{self.out.file(VECTORS)} is missing but {len(done)} chunk(s) are recorded done: "
                "run again with --overwrite to start over"
            )
        matrix = self.out.vectors(rows, state["dim"]) if state.get("dim") is not None else None
        self._encode_started = time.monotonic()
        self._report("encoding", force=True)
        reader = DocumentReader(self.input, self.options.spec)
        seen = 0
        try:
            for chunk in chunked(self._documents(reader), size):
                seen += len(chunk.items)
                if chunk.index in done:
                    continue
                vectors = self._encode_chunk(chunk)
                if matrix is None:
                    state["dim"] = int(vectors.shape[1])
                    matrix = self.out.vectors(rows, state["dim"])
                matrix.write(chunk.start, vectors)
                if self._truncated:
                    state.setdefault("truncated", {})[str(chunk.index)] = sorted(self._truncated)
                done.add(chunk.index)
                state["done"] = sorted(done)
                state["model"] = asdict(self.model) if self.model is not None else None
                self.out.save_state(state)
                self.progress.chunks_done = len(done)
                log.debug("chunk %d/%d written (rows %d..)", chunk.index + 1, state["chunks"], chunk.start)
                self._report("encoding", force=True)
        finally:
            if matrix is not None:
                matrix.close()
        if seen != rows or reader.sha256 != sha256:
            raise BulkError(f"{self.input} changed while the job ran: run it again to start over")
        if rows == 0:
            state["dim"] = self.model.dim if self.model else 0
            VectorFile.create(self.out.file(VECTORS), 0, state["dim"]).close()

    def _write_truncated(self, state: dict[str, Any]) -> int:
        """``truncated.jsonl``: row and id of every document the workers cut to the model's token
        window (its vector is of the cut text, as the model itself gives); returns how many."""
        rows = sorted(r for chunk_rows in state.get("truncated", {}).values() for r in chunk_rows)
        wanted = set(rows)
        with (
            open(self.out.file(IDS), encoding="utf-8") as ids,
            open(self.out.file(TRUNCATED), "w", encoding="utf-8") as out,
        ):
            for row, line in enumerate(ids):
                if row in wanted:
                    out.write(_json_line({"row": row, "id": json.loads(line)}))
        if rows:
            log.warning(
                "%d document(s) were longer than the model's token window and were cut (listed in %s)",
                len(rows),
                TRUNCATED,
            )
        return len(rows)

    def _finish(self, state: dict[str, Any]) -> None:
        truncated = self._write_truncated(state)
        model = self.model
        manifest = {
            "model": model.name if model else None,
            "dim": state["dim"],
            "count": state["rows"],
            "kind": self.options.kind,
            "prefix": model.prefix if model else None,
            "normalized": model.normalized if model else None,
            "dtype": "float32",
            "files": {"vectors": VECTORS, "ids": IDS, "errors": ERRORS, "truncated": TRUNCATED},
            "errors": state["errors"],
            "truncated": truncated,
            "input": {**state["input"], "format": state["options"]["format"]},
            "options": state["options"],
            "created": state["created"],
            "completed": now_iso(),
            "runs": state["runs"],
        }
        self.out.write_manifest(manifest)
        state["complete"] = True
        self.out.save_state(state)
        self._report("done", force=True)
        log.info(
            "%s complete: %d x %s vectors (%s), %d bad document(s)",
            self.out.path,
            state["rows"],
            state["dim"],
            manifest["model"],
            state["errors"],
        )

    def _summary(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "output": str(self.out.path),
            "rows": state["rows"],
            "errors": state["errors"],
            "dim": state.get("dim"),
            "model": (state.get("model") or {}).get("name"),
            "chunks": state["chunks"],
            "runs": state["runs"],
            "encoded_this_run": self.encoded_this_run,
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "rate": round(self.progress.rate, 2),
            "batch_encode_ms": _spread(self._batch_ms),
            "worker_encode_s": round(self._encode_ms_total / 1000.0, 3),
            "manifest": str(self.out.file(MANIFEST)),
        }

    # --- one chunk -------------------------------------------------------------------------

    def _encode_chunk(self, chunk: Chunk[Document]) -> np.ndarray:
        """The chunk's vectors in row order, through the workers' bulk list."""
        texts = [d.text for d in chunk.items]
        self._truncated = []
        todo: deque[list[int]] = deque(
            pack(texts, max_texts=self.options.batch_size, max_chars=self.options.max_batch_chars)
        )
        pending: dict[str, _Pending] = {}
        result: np.ndarray | None = None
        while todo or pending:
            try:
                self._send(todo, pending, texts)
                popped = self.redis.blpop(list(pending), timeout=self._wait_s(pending))
            except REDIS_DOWN as exc:
                # what was queued may be gone with Redis (a restart without persistence): send
                # the chunk's unanswered requests again; a reply to an old one is never read
                self._wait_for_redis(exc)
                todo.extendleft(reversed([p.positions for p in pending.values()]))
                pending.clear()
                continue
            if popped is None:
                self._check_deadlines(pending)
                self._report(self._waiting_phase())
                continue
            key = popped[0].decode() if isinstance(popped[0], bytes) else popped[0]
            item = pending.pop(key)
            body = popped[1]
            reply = unpack_reply(body.encode() if isinstance(body, str) else body)
            if not reply.ok:
                self._refused(chunk, item, reply.code or "error", reply.message or "", todo)
                continue
            vectors = reply.vectors
            assert vectors is not None
            count, dim = vectors.shape
            if count != len(item.positions):
                raise BulkError(f"worker {reply.worker}: {count} vectors for {len(item.positions)} texts")
            self._check_model(reply.worker, dim)
            if result is None:
                result = np.zeros((len(texts), dim), dtype=np.float32)
            elif dim != result.shape[1]:
                raise BulkError(f"worker {reply.worker}: {dim}-dim vectors, others {result.shape[1]}")
            result[item.positions] = vectors
            self._truncated.extend(chunk.start + item.positions[i] for i in reply.truncated)
            self._batch_ms.append(reply.encode_ms)
            self._encode_ms_total += reply.encode_ms
            self.encoded_this_run += len(item.positions)
            self.progress.done += len(item.positions)
            self._last_reply = time.monotonic()
            self._report("encoding")
        assert result is not None
        return result

    def _send(self, todo: deque[list[int]], pending: dict[str, _Pending], texts: list[str]) -> None:
        """Queue requests until ``inflight`` are out, in one round trip."""
        payloads = []
        if todo and len(pending) < self.options.inflight:
            self.clock.sync(self.redis)
        now = self.clock.now_ms()
        while todo and len(pending) < self.options.inflight:
            positions = todo.popleft()
            request = Request(
                id=new_request_id(),
                kind=self.options.kind,
                texts=[texts[i] for i in positions],
                deadline_ms=now + int(self.options.request_timeout * 1000),
                sent_ms=now,
                truncate=self.options.truncate,
            )
            pending[self.keys.reply(request.id)] = _Pending(request, positions)
            payloads.append(request.pack())
        if payloads:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.keys.bulk, *payloads)
            pipe.rpush(self.keys.wake, *([1] * min(len(payloads), 64)))
            pipe.ltrim(self.keys.wake, -64, -1)
            pipe.execute()

    def _wait_s(self, pending: dict[str, _Pending]) -> float:
        first = min(p.sent for p in pending.values()) + self.options.request_timeout
        return max(0.1, min(BLOCK_S, first - time.monotonic()))

    def _check_deadlines(self, pending: dict[str, _Pending]) -> None:
        limit = time.monotonic() - self.options.request_timeout
        if any(p.sent < limit for p in pending.values()):
            raise BulkError(
                f"no worker answered a bulk request within {self.options.request_timeout:g} s: are workers "
                f"running on queue {self.options.queue!r}? (embedq status). Run the job again to resume"
            )

    def _refused(
        self, chunk: Chunk[Document], item: _Pending, code: str, message: str, todo: deque[list[int]]
    ) -> None:
        """An error reply: split a failed multi-text request to find the bad document; else stop."""
        if code in SPLIT_CODES and len(item.positions) > 1:
            log.warning(
                "a bulk request failed (%s: %s); retrying its %d texts one by one",
                code,
                message,
                len(item.positions),
            )
            todo.extendleft([p] for p in reversed(item.positions))
            return
        if code in SPLIT_CODES:
            doc = chunk.items[item.positions[0]]
            raise BulkError(
                f"{self.input.name} line {doc.line} (id {doc.id!r}) cannot be embedded: {message}. "
                "Fix or remove that document and run the job again; finished chunks are kept"
            )
        if code == "too_many_texts":
            raise BulkError(f"the workers refused a bulk request: {message}. Use a smaller --batch-size")
        raise BulkError(f"a worker refused a bulk request ({code}): {message}")

    def _waiting_phase(self) -> str:
        """``encoding``, or after a while without replies, whether any worker is there to answer."""
        if time.monotonic() - self._last_reply < QUIET_S:
            return "encoding"
        try:
            ids = [m.decode() if isinstance(m, bytes) else m for m in self.redis.smembers(self.keys.workers)]
            beats = self.redis.mget([self.keys.heartbeat(i) for i in ids]) if ids else []
        except REDIS_DOWN:
            return "encoding"
        if not any(b is not None for b in beats):
            return f"waiting: no live worker on queue {self.options.queue!r}"
        return "encoding (waiting behind online traffic)"

    def _wait_for_redis(self, exc: Exception) -> None:
        """Wait (capped backoff) until Redis answers again; give up after ``request_timeout``."""
        log.warning("lost Redis (%s); waiting for it to come back", exc)
        self._report("waiting for Redis", force=True)
        down_since = time.monotonic()
        delay = 0.1
        while True:
            time.sleep(delay)
            try:
                self.redis.ping()
            except REDIS_DOWN as again:
                if time.monotonic() - down_since > self.options.request_timeout:
                    raise BulkError(
                        f"Redis unreachable for {self.options.request_timeout:g} s ({again}); "
                        "run the job again to resume"
                    ) from again
                delay = min(2 * delay, 2.0)
                continue
            log.info("Redis is back after %.1f s; resending this chunk's unanswered requests",
                     time.monotonic() - down_since)  # fmt: skip
            return

    def _check_model(self, worker: str, dim: int) -> None:
        """Every vector of one output must come from one model with one prefix: refuse a mix."""
        if worker not in self._models:
            try:
                raw = self.redis.get(self.keys.heartbeat(worker))
            except REDIS_DOWN:
                return  # asked again with its next reply
            try:
                info = Heartbeat.unpack(raw) if raw else None
            except ValueError:
                info = None
            self._models[worker] = (
                _Model(
                    name=info.model,
                    dim=info.dim or dim,
                    prefix=str(info.prefixes.get(self.options.kind, "")),
                    normalized=info.normalized,
                )
                if info
                else None
            )
        seen = self._models[worker]
        if seen is None:
            return  # it stopped before we could ask; the others are checked
        if self.model is None:
            self.model = seen
            log.info("vectors from model %s (dim %d, prefix %r)", seen.name, seen.dim, seen.prefix)
        elif seen != self.model:
            raise BulkError(
                f"worker {worker} serves {seen} but this output holds vectors of {self.model}: one output "
                "must come from one model and prefix. Stop the odd workers (embedq status) and run again"
            )

    def _report(self, phase: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._reported < PROGRESS_EVERY_S:
            return
        self._reported = now
        p = self.progress
        p.phase = phase
        p.elapsed_s = round(now - self.started, 3)
        if self._encode_started and self.encoded_this_run:
            p.rate = round(self.encoded_this_run / max(1e-9, now - self._encode_started), 2)
            p.eta_s = round((p.total - p.done) / p.rate, 1) if p.rate > 0 else None
        p.updated = time.time()
        if self.on_progress is not None:
            try:
                self.on_progress(p)
            except redis.exceptions.RedisError as exc:  # RQ's meta: progress must not stop the job
                log.warning("could not report progress: %s", exc)


def _spread(values: deque[float]) -> dict[str, float] | None:
    """p50, p95 and max of ``values`` (None when empty)."""
    if not values:
        return None
    xs = sorted(values)
    return {
        "p50": round(xs[len(xs) // 2], 2),
        "p95": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 2),
        "max": round(xs[-1], 2),
    }


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) + "\n"


def run_bulk(
    input_path: str | Path,
    output_dir: str | Path,
    options: BulkOptions,
    client: redis.Redis,
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Embed ``input_path`` into ``output_dir`` through the workers; a summary of the run."""
    return BulkJob(input_path, output_dir, options, client, on_progress=on_progress).run()


def embed_file(input_path: str, output_dir: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RQ job (``embedq bulk submit`` enqueues it): progress goes to the job's meta."""
    from rq import get_current_job

    from .rq_jobs import job_redis

    opts = BulkOptions.from_json(options or {})
    job = get_current_job()
    if job is None:
        raise BulkError("embed_file runs inside an RQ worker; use run_bulk (embedq bulk run) elsewhere")
    client = job_redis(job.connection, opts.redis_url)

    def report(progress: Progress) -> None:
        job.meta["progress"] = progress.to_json()
        job.save_meta()

    return run_bulk(input_path, output_dir, opts, client, on_progress=report)
