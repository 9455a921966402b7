"""One batch through the model: its rows laid out once, token windows checked, the texts encoded
(each distinct text once), and a reply assembled per request.

Tokens are counted once per request (``TokenCounter``): the batcher's cost cap, the window check
and the cost model read the same counts. A batch whose expected encode time is over the budget
(only a single large request can be: the batcher closes batches at the budget) is encoded in
slices, and the worker serves waiting questions between them (``between``), so no batch holds
the encoder much past the budget. Nothing a request carries can fail the others: a batch whose
encode raises is retried text by text, so only the bad text's request is retried (and, out of
attempts, answered with an error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedq.protocol import Reply, Request

from .admission import CostModel
from .cache import Cacheable
from .encoder import Encoder
from .lane import RedisQueue, Taken
from .metrics import Metrics
from .outcomes import DeadLetter, Outcomes

log = logging.getLogger("embedq.worker")


class TokenCounter:
    """Token counts of taken requests (each text with its prefix and special tokens, uncut),
    counted once per request while it is held."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._counts: dict[str, tuple[int, ...]] = {}

    def of(self, item: Taken) -> tuple[int, ...]:
        """The counts of ``item``'s texts (empty for a refused request)."""
        request = item.request
        if request is None:
            return ()
        counts = self._counts.get(request.id)
        if counts is None:
            try:
                counts = tuple(self.encoder.token_counts(request.texts, [request.kind] * len(request.texts)))
            except Exception as exc:  # the encode will fail the same text, and say why
                log.warning("cannot count the tokens of a request: %s: %s", type(exc).__name__, exc)
                counts = (0,) * len(request.texts)
            self._counts[request.id] = counts
        return counts

    def padded(self, items: Sequence[Taken]) -> tuple[int, int]:
        """(texts, tokens each is padded to) of ``items`` as one batch, cut to the model's window."""
        window = self.encoder.max_tokens
        longest = 1
        texts = 0
        for item in items:
            counts = self.of(item)
            texts += len(counts)
            for n in counts:
                longest = max(longest, min(n, window) if window else n)
        return texts, longest

    def forget(self, items: Sequence[Taken]) -> None:
        """Drop the counts of answered requests."""
        for item in items:
            if item.request is not None:
                self._counts.pop(item.request.id, None)

    def clear(self) -> None:
        """Drop every count (what the worker held went back to the queue)."""
        self._counts.clear()


@dataclass(frozen=True)
class Entry:
    """One request of a batch and where its texts sit among the batch's rows."""

    item: Taken
    request: Request
    rows: range
    tokens: tuple[int, ...] = ()
    """Tokens each text is encoded with (after any cut); empty when the model has no window."""
    cut: tuple[int, ...] = ()
    """Indexes of this request's texts that the model cuts to its window."""


@dataclass(frozen=True)
class BatchRows:
    """The texts of a batch's requests flattened once, in order: ``texts[i]`` is of ``kinds[i]``,
    and each entry knows its rows."""

    entries: tuple[Entry, ...]
    texts: tuple[str, ...]
    kinds: tuple[str, ...]

    @classmethod
    def of(
        cls, items: Sequence[Taken], details: Sequence[tuple[tuple[int, ...], tuple[int, ...]]] = ()
    ) -> BatchRows:
        """Rows for ``items`` (parsed requests), with each one's (tokens, cut) when known."""
        entries: list[Entry] = []
        texts: list[str] = []
        kinds: list[str] = []
        for n, item in enumerate(items):
            request = item.request
            assert request is not None
            start = len(texts)
            texts.extend(request.texts)
            kinds.extend([request.kind] * len(request.texts))
            tokens, cut = details[n] if details else ((), ())
            entries.append(Entry(item, request, range(start, len(texts)), tokens, cut))
        return cls(tuple(entries), tuple(texts), tuple(kinds))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def row_tokens(self) -> list[int]:
        """Tokens of each row (after any cut; 1 where the model reports none)."""
        out = [1] * len(self.texts)
        for entry in self.entries:
            if entry.tokens:
                out[entry.rows.start : entry.rows.stop] = entry.tokens
        return out


class BatchEncoder:
    """Runs batches through one encoder for one worker: windows, encode, replies."""

    def __init__(
        self,
        encoder: Encoder,
        metrics: Metrics,
        cost: CostModel,
        *,
        worker_id: str,
        truncate: bool,
        max_attempts: int,
        budget_ms: float = 0.0,
        cache_kinds: Sequence[str] = (),
    ) -> None:
        self.encoder = encoder
        self.metrics = metrics
        self.cost = cost
        """Updated with every clean encode: the batcher's cap and deadline admission read it."""
        self.tokens = TokenCounter(encoder)
        self.budget_ms = budget_ms
        """Longest an encode should hold the worker (0: no cap); a single text may take longer."""
        self.between: Callable[[], object] | None = None
        """Called between the slices of a batch over the budget: serves waiting questions."""
        self.worker_id = worker_id
        self.truncate = truncate
        self.max_attempts = max_attempts
        self.cache_kinds = tuple(cache_kinds)
        self.batches = 0
        """Batches encoded so far."""

    # --- token windows ---------------------------------------------------------------------

    def check_windows(self, items: Sequence[Taken], out: Outcomes) -> BatchRows:
        """The rows to encode: every request, with its token counts and the texts the model will
        cut; a request with a text over the window is refused instead if it asked not to be cut
        (``truncate: false``, or the worker's ``EMBED_TRUNCATE=false``)."""
        rows = BatchRows.of(items)
        window = self.encoder.max_tokens
        if not rows.texts:
            return rows
        keep: list[Taken] = []
        details: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for entry in rows.entries:
            mine = self.tokens.of(entry.item)
            if not window:  # no window: nothing is cut, and the counts still price the batch
                keep.append(entry.item)
                details.append((mine, ()))
                continue
            over = tuple(i for i, n in enumerate(mine) if n > window)
            request = entry.request
            cut = self.truncate if request.truncate is None else request.truncate
            if over and not cut:
                i = over[0]
                out.error(
                    request.id,
                    "text_too_long",
                    f"text {i} is {mine[i]} tokens; the model's window is {window} tokens and this "
                    "request asked not to cut it (truncate=false): split the text",
                )
                continue
            if over:
                self.metrics.truncated(len(over))
            keep.append(entry.item)
            details.append((tuple(min(n, window) for n in mine), over))
        if len(keep) == len(rows.entries):  # the usual case: same rows, now with their counts
            return BatchRows(
                tuple(
                    Entry(e.item, e.request, e.rows, tokens, cut)
                    for e, (tokens, cut) in zip(rows.entries, details, strict=True)
                ),
                rows.texts,
                rows.kinds,
            )
        return BatchRows.of(keep, details)

    # --- encode and reply ------------------------------------------------------------------

    def encode_and_reply(self, rows: BatchRows, lane: RedisQueue, out: Outcomes) -> float:
        """Encode ``rows`` (in slices if they are over the budget) and add their replies to
        ``out``; a request whose text failed goes to ``out.retry`` or, out of attempts, gets an
        error. Returns the encode ms (all slices)."""
        texts, kinds = list(rows.texts), list(rows.kinds)
        vectors = np.zeros((len(texts), self.encoder.dim), np.float32)
        failures: dict[int, str] = {}
        encode_ms = 0.0
        lengths = rows.row_tokens
        for n, part in enumerate(self.slices(rows, lengths)):
            if n and self.between is not None:
                self.between()
            started = time.perf_counter()
            got, failed = self.encode(texts[part.start : part.stop], kinds[part.start : part.stop])
            ms = (time.perf_counter() - started) * 1000.0
            vectors[part.start : part.stop] = got
            failures.update({part.start + i: why for i, why in failed.items()})
            encode_ms += ms
            self.batches += 1
            self.metrics.batch(len(part), ms / 1000.0, lane.lane)
            if not failed:
                self.cost.add(len(part), max(lengths[part.start : part.stop]), ms)
        failed_entries: list[tuple[Entry, str]] = []
        for entry in rows.entries:
            bad = [i for i in entry.rows if i in failures]
            if bad:
                why = f"text {bad[0] - entry.rows.start} could not be encoded: {failures[bad[0]]}"
                failed_entries.append((entry, why))
                continue
            self._answer(entry, vectors[entry.rows.start : entry.rows.stop], encode_ms, len(rows), lane, out)
        if failed_entries:
            self._retry_or_give_up(failed_entries, lane, out)
        return encode_ms

    def slices(self, rows: BatchRows, lengths: list[int]) -> list[range]:
        """The row ranges to encode one at a time (``lengths``: each row's tokens): all rows at
        once when they fit the budget (or there is none), else consecutive slices that each fit
        it, of at least one text."""
        whole = range(len(rows))
        if not self.budget_ms or len(rows) <= 1:
            return [whole]
        if self.cost.expected_ms(len(rows), max(lengths)) <= self.budget_ms:
            return [whole]
        out: list[range] = []
        start, longest = 0, 1
        for i, n in enumerate(lengths):
            grown = max(longest, n)
            if i > start and self.cost.expected_ms(i + 1 - start, grown) > self.budget_ms:
                out.append(range(start, i))
                start, grown = i, n
            longest = max(1, grown)
        out.append(range(start, len(rows)))
        return out

    def _answer(
        self,
        entry: Entry,
        vectors: np.ndarray,
        encode_ms: float,
        batch_size: int,
        lane: RedisQueue,
        out: Outcomes,
    ) -> None:
        request = entry.request
        queue_ms = max(0.0, float(entry.item.taken_ms - request.sent_ms))
        self.metrics.answered(queue_ms, encode_ms, lane.lane)
        reply = Reply(
            id=request.id,
            vectors=vectors,
            queue_ms=queue_ms,
            encode_ms=encode_ms,
            batch_size=batch_size,
            worker=self.worker_id,
            truncated=entry.cut,
            tokens=entry.tokens,
            digest=request.digest,
            model=out.model,
            fingerprint=out.fingerprint,
        )
        out.reply(reply, "ok", request.deadline_ms)
        if request.kind in self.cache_kinds:
            cut = set(entry.cut)
            counts = entry.tokens or (0,) * len(request.texts)
            out.cacheable.extend(
                Cacheable(request.kind, text, vectors[i], counts[i])
                for i, text in enumerate(request.texts)
                if i not in cut
            )

    def _retry_or_give_up(self, failed: list[tuple[Entry, str]], lane: RedisQueue, out: Outcomes) -> None:
        totals = lane.count_attempts([entry.request.id for entry, _ in failed])
        for (entry, why), attempts in zip(failed, totals, strict=True):
            if attempts < self.max_attempts:
                self.metrics.outcome("retried", lane.lane)
                out.retry.append(entry.item.raw)
                continue
            message = f"{why} (gave up after {attempts} attempts)"
            out.error(entry.request.id, "encode_failed", message, outcome="dead")
            out.dead.append(
                DeadLetter(message, "encode_failed", entry.item.raw, self.worker_id, entry.request.id)
            )

    def encode(self, texts: list[str], kinds: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Encode a batch; if that fails, each text alone, so only bad texts fail. Returns the
        vectors and, per failed row, why."""
        try:
            return self.checked(texts, kinds), {}
        except Exception as exc:
            out = np.zeros((len(texts), self.encoder.dim), np.float32)
            if len(texts) == 1:
                log.warning("encode failed: %s: %s", type(exc).__name__, exc)
                return out, {0: f"{type(exc).__name__}: {exc}"}
            log.warning("encode of %d texts failed (%s); retrying text by text", len(texts), exc)
        failures: dict[int, str] = {}
        for i, (text, kind) in enumerate(zip(texts, kinds, strict=True)):
            try:
                out[i] = self.checked([text], [kind])[0]
            except Exception as exc:
                failures[i] = f"{type(exc).__name__}: {exc}"
        return out, failures

    def checked(self, texts: list[str], kinds: list[str]) -> np.ndarray:
        """The encoder's vectors, each distinct (kind, text) encoded once (a chatbot's batch often
        holds the same question twice), checked for shape and finiteness."""
        first: dict[tuple[str, str], int] = {}
        rows = [first.setdefault(pair, len(first)) for pair in zip(kinds, texts, strict=True)]
        unique = list(first)
        vectors = np.asarray(
            self.encoder.encode([t for _, t in unique], [k for k, _ in unique]), dtype=np.float32
        )
        if vectors.shape != (len(unique), self.encoder.dim):
            raise ValueError(f"encoder returned shape {vectors.shape} for {len(unique)} texts")
        if not np.isfinite(vectors).all():
            raise ValueError("encoder returned non-finite values")
        return vectors if len(unique) == len(texts) else vectors[rows]
