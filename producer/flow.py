"""Flow control of a long call: how many requests it keeps in flight and how many texts each
carries, from what the fleet's replies say (``queue_ms``, ``encode_ms``, ``batch_size``).

A fixed window (32 requests of 8 texts) is 13 s of short texts or a minute of passages on
multilingual-e5-large, far past a 5 s timeout. Instead the window grows (by one request per
window's worth of replies) while replies say they hardly waited in the queue, and halves when
they waited longer than the target (a share of the timeout), so the background lane stays short
and several long calls share the fleet. Each request carries as many texts as fit the worker's
batch budget at the measured cost per text: one passage at a time on a large model, a full batch
of short texts on a small one. The clients and the bulk job use it alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import defaults

EWMA_ALPHA = 0.3
"""Weight of the newest reply in the cost per text."""


@dataclass
class FlowControl:
    """One call's window and request size, adjusted by every reply."""

    target_queue_ms: float
    """Replies that waited longer than this in the queue shrink the window."""
    budget_ms: float = defaults.BATCH_BUDGET_MS
    """Encode time one request should cost (the workers' batch budget)."""
    max_batch: int = defaults.MAX_BATCH
    window_max: int = defaults.WINDOW
    size: float = defaults.WINDOW_START
    """The window, fractional: it grows by 1/size a reply, so by one request per window."""
    per_text_ms: float | None = None
    """Measured encode ms per text (None before the first reply)."""
    _calm: int = 0
    """Replies to take before the window may halve again (once per window's worth)."""

    @property
    def window(self) -> int:
        """Requests that may be in flight now."""
        return max(1, int(self.size))

    @classmethod
    def for_timeout(cls, timeout_s: float, **options: int | float) -> FlowControl:
        """Flow control for a call that may wait ``timeout_s`` without progress."""
        return cls(target_queue_ms=timeout_s * 1000.0 * defaults.QUEUE_TARGET_SHARE, **options)  # type: ignore[arg-type]

    def texts_per_request(self) -> int:
        """Texts the next request should carry: one until a reply has priced a text."""
        if self.per_text_ms is None:
            return 1
        return max(1, min(self.max_batch, int(self.budget_ms // max(self.per_text_ms, 1e-3))))

    def on_reply(self, queue_ms: float, encode_ms: float, batch_size: int) -> None:
        """Take what one reply says about the fleet."""
        if batch_size > 0 and encode_ms > 0:
            per_text = encode_ms / batch_size
            old = self.per_text_ms
            self.per_text_ms = per_text if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * per_text
        self._calm = max(0, self._calm - 1)
        if queue_ms > self.target_queue_ms:
            if not self._calm:
                self.size = max(1.0, self.size / 2)
                self._calm = self.window
        elif queue_ms < self.target_queue_ms / 2:
            self.size = min(float(self.window_max), self.size + 1 / self.size)
