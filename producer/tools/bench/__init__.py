"""``embedq bench``: the design record's sweep, re-run in three modes side by side, plus the targets.

Modes, for the same model in one run:
  inproc  ``model.encode`` called directly, one call at a time (the limit),
  naive   N threads calling ``model.encode`` at once (the design record's problem),
  queue   N producers through Redis and one worker process (this project's design).
Every number that matters is a ratio between modes measured minutes apart on the same machine,
so machine noise largely cancels. Output: a Markdown table, a JSON file and a PNG chart.

One module per concern: ``plan`` (what to measure), ``measure`` (closed-loop runs and the
per-batch overhead), ``run`` (the sweep and the interleaved targets), ``report``.
"""

from embedq.stats import percentile

from ..reference import ReferenceModel
from .measure import Cell, Load, closed_loop, measure_inproc, measure_overhead, measure_queue, steady_window
from .plan import (
    LONG_TEXT,
    POLICY_CONFIGS,
    SHORT_TEXTS,
    Plan,
    RepeatingTexts,
    Texts,
    TextSource,
    Variant,
    make_export,
    variants,
)
from .report import chart, fmt, markdown, write_reports
from .run import machine_facts, measure_targets, run

__all__ = [
    "LONG_TEXT",
    "POLICY_CONFIGS",
    "SHORT_TEXTS",
    "Cell",
    "Load",
    "Plan",
    "ReferenceModel",
    "RepeatingTexts",
    "TextSource",
    "Texts",
    "Variant",
    "chart",
    "closed_loop",
    "fmt",
    "machine_facts",
    "make_export",
    "markdown",
    "measure_inproc",
    "measure_overhead",
    "measure_queue",
    "measure_targets",
    "percentile",
    "run",
    "steady_window",
    "variants",
    "write_reports",
]
