"""Admission: which requests of a batch go on to the encoder, and why the others do not.

In order: a request that did not parse gets its error (or, without an id to answer, a dead
letter); one pinned to another model gets ``model_mismatch``; one whose producer has stopped
waiting is not encoded for nobody, and one that cannot be answered before its deadline (given
this batch's expected encode time, from the ``CostModel``) is told so at once with
``deadline_exceeded``, instead of holding the encoder for a reply nobody reads. Every time is on
the Redis server's clock, the one all hosts share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .encoder import Encoder
from .identity import pin_refusal
from .lane import Taken
from .metrics import Metrics
from .outcomes import DeadLetter, Outcomes

log = logging.getLogger("embedq.worker")

EWMA_ALPHA = 0.2
"""Weight of the newest encode in the cost model's correction."""
CORRECTION_RANGE = (0.25, 4.0)
"""The correction never strays further from the warm-up fit than this (one odd encode, a noisy
neighbour on the host, must not make every request look late or every batch look free)."""
CAUTION = 3.0
"""Admission plans for an encode this many mean deviations slower than expected: a request is
encoded only if it would still be in time then (on a noisy host the mean alone let ~1 in 6
admitted requests be answered late, past anyone's wait)."""
SKIP_LOG_EVERY_S = 10.0
"""Skipped (past-deadline) requests are logged at most this often, as a count."""


@dataclass
class CostModel:
    """How long an encode of ``n`` texts padded to ``tokens`` tokens is expected to take:
    ``base_ms + per_token_ms * n * tokens``, fitted by least squares to encodes timed at warm-up
    (a short text, a full batch of them, a text as long as the model's window), then kept honest
    by a moving average of measured / predicted. Calibrated per model: on all-MiniLM-L6-v2 a batch
    costs milliseconds, on multilingual-e5-large seconds, and the same settings must hold on both.
    """

    base_ms: float = 0.0
    per_token_ms: float = 0.0
    correction: float = 1.0
    """Measured / predicted, averaged over recent encodes (kept within ``CORRECTION_RANGE``)."""
    spread: float = 0.0
    """Mean deviation of measured / predicted from ``correction``, averaged the same way."""
    rest_ms: float = 0.0
    """A batch's time outside the encode (parse, window check, the reply's write), averaged."""

    @property
    def calibrated(self) -> bool:
        """True once warm-up measurements set the model."""
        return self.base_ms > 0 or self.per_token_ms > 0

    def calibrate(self, samples: Sequence[tuple[int, int, float]]) -> None:
        """Fit to measured encodes, each ``(texts, padded tokens, ms)``."""
        xs = [float(n * tokens) for n, tokens, _ in samples]
        ys = [ms for _, _, ms in samples]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        slope = (
            sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
        )
        self.per_token_ms = max(0.0, slope)
        self.base_ms = max(0.0, mean_y - self.per_token_ms * mean_x)
        if not self.calibrated:  # all encodes took no time at all: count a token as a microsecond
            self.per_token_ms = 0.001
        self.correction = 1.0
        self.spread = 0.0

    def expected_ms(self, texts: int, tokens: int) -> float:
        """Expected encode time of ``texts`` texts padded to ``tokens`` tokens (0 before calibration)."""
        if texts <= 0 or not self.calibrated:
            return 0.0
        return (self.base_ms + self.per_token_ms * texts * max(1, tokens)) * self.correction

    def add(self, texts: int, tokens: int, ms: float) -> None:
        """One encode of ``texts`` texts padded to ``tokens`` tokens took ``ms``."""
        if texts <= 0 or not self.calibrated:
            return
        predicted = (self.base_ms + self.per_token_ms * texts * max(1, tokens)) or 1e-9
        ratio = min(CORRECTION_RANGE[1], max(CORRECTION_RANGE[0], ms / predicted))
        self.spread = (1 - EWMA_ALPHA) * self.spread + EWMA_ALPHA * abs(ratio - self.correction)
        self.correction = (1 - EWMA_ALPHA) * self.correction + EWMA_ALPHA * ratio

    def add_rest(self, ms: float) -> None:
        """One batch spent ``ms`` outside its encode."""
        self.rest_ms = (1 - EWMA_ALPHA) * self.rest_ms + EWMA_ALPHA * max(0.0, ms)

    def cautious_ms(self, texts: int, tokens: int) -> float:
        """Time from admission to the reply that a batch stays under unless the host is unusually
        slow: the expected encode widened by ``CAUTION`` mean deviations, plus the batch's usual
        time outside the encode (what admission must plan for, not the average)."""
        expected = self.expected_ms(texts, tokens)
        if expected <= 0.0:
            return 0.0
        return expected * (1.0 + CAUTION * self.spread / self.correction) + self.rest_ms

    def as_dict(self) -> dict[str, float]:
        """What the heartbeat reports of it."""
        return {
            "base_ms": round(self.base_ms * self.correction, 3),
            "per_token_ms": round(self.per_token_ms * self.correction, 6),
        }


def calibrate(cost: CostModel, encoder: Encoder, max_batch: int, budget_ms: float) -> None:
    """Time the three shapes that bound every batch's cost (a short text, a full batch of them, a
    text as long as the model's window) and fit ``cost`` to them; logs the result."""
    window = encoder.max_tokens or 256
    long_text = " ".join(f"warm-up{i % 10}" for i in range(window))
    shapes = [["warm-up text 0"], [f"warm-up text {i}" for i in range(max_batch)], [long_text]]
    samples = []
    for texts in shapes:
        kinds = ["passage"] * len(texts)
        counts = encoder.token_counts(texts, kinds)
        padded = max(min(n, window) for n in counts)
        started = time.perf_counter()
        encoder.encode(texts, kinds)
        samples.append((len(texts), padded, (time.perf_counter() - started) * 1000.0))
    cost.calibrate(samples)
    log.info(
        "encode cost: %.1f ms + %.4f ms per token (a full batch of short texts %.0f ms, one %d-token "
        "text %.0f ms); batch budget %s",
        cost.base_ms,
        cost.per_token_ms,
        samples[1][2],
        samples[2][1],
        samples[2][2],
        f"{budget_ms:g} ms" if budget_ms else "off",
    )


class Admission:
    """Decides, per batch, which requests go on to the encoder; counts and logs the rest."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._skipped_since_log = 0
        self._next_skip_log = 0.0

    def parsed(self, batch: Sequence[Taken], lane: str, out: Outcomes) -> list[Taken]:
        """The parsed requests of ``batch``; each refused one gets its error (or, without an id
        to answer, a dead letter)."""
        live: list[Taken] = []
        for item in batch:
            rej = item.rejected
            if rej is None:
                live.append(item)
                continue
            log.warning("refused a request (%s): %s", rej.code, rej.message)
            if rej.request_id is None:
                self.metrics.outcome("dead", lane)
                out.dead.append(DeadLetter(rej.message, rej.code, item.raw, out.worker))
            else:
                out.error(rej.request_id, rej.code, rej.message)
        return live

    def for_this_model(
        self, live: Sequence[Taken], out: Outcomes, served: str, encoder: Encoder
    ) -> list[Taken]:
        """The requests this worker's model may answer; one pinned to another model gets
        ``model_mismatch`` (never vectors of a model it did not ask for)."""
        keep: list[Taken] = []
        for item in live:
            assert item.request is not None
            why = pin_refusal(item.request, served, encoder.name, encoder.fingerprint)
            if why is None:
                keep.append(item)
            else:
                log.warning("refused a request pinned to another model: %s", why)
                out.error(item.request.id, "model_mismatch", why)
        return keep

    def admit(
        self, live: Sequence[Taken], now_ms: int, lane: str, out: Outcomes, *, encode_ms: float
    ) -> list[Taken]:
        """The requests that can still be answered in time; the others are skipped unencoded:
        past their deadline (their producer has gone: no reply), or unable to meet it given the
        time ``encode_ms`` this batch is planned to take to its reply (``CostModel.cautious_ms``;
        a ``deadline_exceeded`` error, so the producer hears why)."""
        finish_ms = now_ms + encode_ms
        keep: list[Taken] = []
        skipped = 0
        for item in live:
            request = item.request
            assert request is not None
            if request.deadline_ms <= now_ms:
                self.metrics.outcome("expired", lane)
                skipped += 1
            elif request.deadline_ms < finish_ms:
                out.error(
                    request.id,
                    "deadline_exceeded",
                    f"it waited {now_ms - request.sent_ms} ms in the queue and the next encode takes "
                    f"about {encode_ms:.0f} ms, past its deadline: the workers are behind (add "
                    "workers, or raise the producer's timeout)",
                    outcome="late",
                )
                skipped += 1
            else:
                keep.append(item)
        if skipped:
            self._note_skipped(skipped)
        return keep

    def _note_skipped(self, n: int) -> None:
        self._skipped_since_log += n
        now = time.monotonic()
        if now >= self._next_skip_log:
            log.warning(
                "skipped %d request(s) unencoded that could not be answered before their deadline "
                "(measured on the Redis clock): the workers are behind",
                self._skipped_since_log,
            )
            self._skipped_since_log = 0
            self._next_skip_log = now + SKIP_LOG_EVERY_S
