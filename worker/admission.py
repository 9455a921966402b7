"""Deadline admission: which requests of a batch can still be answered in time.

A request whose producer has stopped waiting is not encoded for nobody, and one that cannot be
answered before its deadline (given this batch's expected encode time) is told so at once with
``deadline_exceeded``, instead of holding the encoder for a reply nobody reads. Every time is on
the Redis server's clock, the one all hosts share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .lane import Taken
from .metrics import Metrics
from .outcomes import Outcomes

log = logging.getLogger("embedq.worker")

EWMA_ALPHA = 0.2
"""Weight of the newest encode time in the per-size moving average."""
SKIP_LOG_EVERY_S = 10.0
"""Skipped (past-deadline) requests are logged at most this often, as a count."""


@dataclass
class EncodeEstimate:
    """How long an encode of n texts is expected to take: a moving average per batch size,
    first measured at warm-up (1 text and a full batch, with the sizes between interpolated).
    Per size, not per text: a batch of 8 costs far less than 8 batches of 1, and an estimate that
    assumed otherwise would refuse requests that could be answered in time."""

    by_size: dict[int, float] = field(default_factory=dict)

    def calibrate(self, one_ms: float, full_ms: float, full: int) -> None:
        """Set the estimate from a measured encode of 1 text and of ``full`` texts."""
        for n in range(1, full + 1):
            self.by_size[n] = one_ms + (full_ms - one_ms) * (n - 1) / max(1, full - 1)

    def add(self, texts: int, ms: float) -> None:
        """One encode of ``texts`` texts took ``ms``."""
        if texts <= 0:
            return
        old = self.by_size.get(texts)
        self.by_size[texts] = ms if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * ms

    def expected_ms(self, texts: int) -> float:
        """Expected encode time of ``texts`` texts (0 before anything was measured)."""
        if texts in self.by_size:
            return self.by_size[texts]
        if not self.by_size:
            return 0.0
        largest = max(self.by_size)
        return self.by_size[largest] * texts / largest


class Admission:
    """Decides, per batch, which requests go on to the encoder; counts and logs the rest."""

    def __init__(self, estimate: EncodeEstimate, metrics: Metrics) -> None:
        self.estimate = estimate
        self.metrics = metrics
        self._skipped_since_log = 0
        self._next_skip_log = 0.0

    def admit(self, live: Sequence[Taken], now_ms: int, lane: str, out: Outcomes) -> list[Taken]:
        """The requests that can still be answered in time; the others are skipped unencoded:
        past their deadline (their producer has gone: no reply), or unable to meet it given this
        batch's expected encode time (a ``deadline_exceeded`` error, so the producer hears why)."""
        texts = sum(t.size for t in live)
        encode_ms = self.estimate.expected_ms(texts)
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
