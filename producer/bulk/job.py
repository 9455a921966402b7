"""The bulk job: embed every document of an input file into an output directory, resumably.

Two passes over the input, both streaming. The first checks every record, writes the ids (row
order) and the errors file, and hashes the input. The second sends the documents, a chunk at a
time, as requests on the workers' low-priority bulk list (``<ns>:bulk``), keeping ``inflight``
requests queued so that a worker never idles while the job has work, and writes each finished
chunk into the matrix before recording it done. A worker takes bulk requests only when no
online request waits, so the chatbot's queries never queue behind the job.

The same job runs inside an RQ worker (``rq_entry.embed_file``, through ``embedq bulk submit``)
and in the foreground (``embedq bulk run``). Its options are ``options``, its requests in flight
``window``, its one-model rule ``model_check``, its files ``output``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import redis

from ..connection import REDIS_DOWN
from ..protocol import Keys, unpack_reply
from ..stats import percentile
from .model_check import Model, ModelCheck
from .options import BulkError, BulkOptions, Progress, now_iso
from .output import ERRORS, IDS, MANIFEST, TRUNCATED, VECTORS, OutputDir, OutputError, VectorFile
from .plan import Chunk, chunk_count, chunked, pack
from .reader import BadDocument, BulkInputError, Document, DocumentReader
from .window import Pending, RequestWindow

log = logging.getLogger("embedq.bulk")

PROGRESS_EVERY_S = 1.0
"""Most often progress is reported (RQ job meta, a progress bar)."""
BATCH_TIMES_KEPT = 10_000
"""Recent bulk batches whose encode time the summary describes: how long an online request may
wait behind one."""
SPLIT_CODES = ("encode_failed", "worker_died", "text_too_long")
"""Error replies after which a multi-text request is retried text by text, to find the one bad
document; the others still get their vectors."""


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
        self.duplicates = 0
        """Documents whose id an earlier one has (listed as bad, or kept: ``keep_duplicate_ids``)."""
        self._reported = 0.0
        self._encode_started = 0.0
        self._batch_ms: deque[float] = deque(maxlen=BATCH_TIMES_KEPT)
        self._encode_ms_total = 0.0
        self.window = RequestWindow(client, options)
        self.models = ModelCheck(client, self.keys, options.kind)
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
            # deleted or cut since: an error, never "done"
            if state.get("dim") is not None:
                self.out.verify(state.get("files") or {}, state["rows"], state["dim"])
            log.info("%s is already complete (its files checked): nothing to do", self.out.path)
            self.progress.done, self.progress.chunks_done = rows, state["chunks"]
            self._report("done", force=True)
            return self._summary(state)
        if state["model"] is not None:
            self.models.model = Model(**state["model"])
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
            for doc in self._checked(reader):
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
        if self.duplicates:
            kept = self.options.keep_duplicate_ids
            where = "embedded anyway (--keep-duplicate-ids)" if kept else f"listed in {ERRORS}"
            log.warning("%d document(s) repeat an earlier id: %s", self.duplicates, where)
        return rows, errors

    def _scan_file(self, name: str) -> Path:
        return self.out.file(name + ".scan")

    def _install_scan(self) -> None:
        for name in (IDS, ERRORS):
            self._scan_file(name).replace(self.out.file(name))

    def _discard_scan(self) -> None:
        for name in (IDS, ERRORS):
            self._scan_file(name).unlink(missing_ok=True)

    def _checked(self, reader: DocumentReader) -> Iterator[Document | BadDocument]:
        """The input's records, a repeated id (compared as a string: what a vector store keys
        by) turned into a bad document unless ``keep_duplicate_ids``: both passes over the
        input (the scan and the encoding) see the same documents."""
        first_line: dict[str, int] = {}
        self.duplicates = 0
        for doc in reader:
            if isinstance(doc, Document):
                seen = first_line.setdefault(str(doc.id), doc.line)
                if seen != doc.line:
                    self.duplicates += 1
                    if not self.options.keep_duplicate_ids:
                        doc = BadDocument(
                            doc.line, doc.id, "duplicate_id",
                            f"id {doc.id!r} is the id of line {seen} too: ids must be unique "
                            "(--keep-duplicate-ids embeds both)",
                        )  # fmt: skip
            yield doc

    def _documents(self, reader: DocumentReader) -> Iterator[Document]:
        for doc in self._checked(reader):
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
                state["model"] = asdict(self.models.model) if self.models.model is not None else None
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
            state["dim"] = self.models.model.dim if self.models.model else 0
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
        model = self.models.model
        manifest = {
            "model": model.name if model else None,
            "served_name": model.served_name if model else None,
            "fingerprint": model.fingerprint if model else None,
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
        manifest["duplicate_ids"] = self.duplicates
        manifest["checksums"] = state["files"] = self.out.checksums((VECTORS, IDS))
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
        window = self.window
        result: np.ndarray | None = None
        while todo or window.pending:
            try:
                window.send(todo, texts, self.models.fingerprint)
                popped = window.pop()
            except REDIS_DOWN as exc:
                window.resend_after(exc, todo, lambda phase: self._report(phase, force=True))
                continue
            if popped is None:
                window.check_deadlines()
                self._report(window.waiting_phase())
                continue
            item, body = popped
            reply = unpack_reply(body)
            window.flow.on_reply(reply.queue_ms, reply.encode_ms, reply.batch_size)
            if not reply.ok:
                self._refused(chunk, item, reply.code or "error", reply.message or "", todo)
                continue
            vectors = reply.vectors
            assert vectors is not None
            count, dim = vectors.shape
            if count != len(item.positions):
                raise BulkError(f"worker {reply.worker}: {count} vectors for {len(item.positions)} texts")
            self.models.check(reply.worker, dim, reply.fingerprint, reply.model)
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
            self._report("encoding")
        assert result is not None
        return result

    def _refused(
        self, chunk: Chunk[Document], item: Pending, code: str, message: str, todo: deque[list[int]]
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
        "p50": round(percentile(xs, 50), 2),
        "p95": round(percentile(xs, 95), 2),
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
