"""What a bulk job is asked to do and what it reports: its options (JSON, the RQ job's
arguments), its progress (the RQ job's meta), its one error type, and the RQ queue it goes to."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from .. import defaults
from ..protocol import DEFAULT_QUEUE, KINDS
from .reader import InputSpec

RQ_QUEUE = "embed-bulk"
"""The RQ queue bulk jobs go to (``embedq bulk worker`` serves it)."""
BLOCK_S = 2.0
"""Longest single wait for a reply, so progress and deadlines are looked at regularly."""


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
    max_chars: int = defaults.MAX_TEXT_CHARS
    """Longest text accepted (the workers' EMBED_MAX_TEXT_CHARS); longer ones are bad documents."""
    truncate: bool = True
    """A document longer than the model's token window: cut it as the model does and list it in
    ``truncated.jsonl`` (True), or stop the job naming it (False, ``--no-truncate``)."""
    fail_fast: bool = False
    """Stop at the first bad document instead of listing it in the errors file."""
    keep_duplicate_ids: bool = False
    """A document whose id an earlier one has (``1`` and ``"1"`` are the same id to a vector
    store): embed it anyway (True, counted in the manifest) or list it as a bad document with
    code ``duplicate_id`` (False, the default): the first one wins."""
    overwrite: bool = False
    """Discard an earlier job's output in the directory instead of refusing or resuming."""
    queue: str = DEFAULT_QUEUE
    """The workers' online queue name; bulk requests go to its namespace's bulk list."""
    request_timeout: float = 3600.0
    """Seconds one bulk request may wait for a worker (it waits behind all online traffic)."""
    redis_url: str | None = None
    """Redis of the workers; None: the RQ job's own connection."""
    model: str | None = None
    """The model the output must come from (a served name or the model's id; ``--model``): workers
    of another refuse. None: whatever answers first, and then exactly that model (its fingerprint)
    for the rest of the output, this run and every resumed one."""

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
        "keep_duplicate_ids",
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


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
