"""The one percentile every latency figure uses (worker metrics, bulk job summaries, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolated ``p``-th percentile (0..100) of already sorted values; 0.0 for none."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    k = (len(sorted_values) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(sorted_values) - 1)
    return float(sorted_values[f] + (sorted_values[c] - sorted_values[f]) * (k - f))
