"""A timeline of what one process sent to Redis and what its encoder did, for the benchmarks that
split the queue's cost into stages (``benchmarks/overhead.py``, ``benchmarks/batch_cost.py``).

Every event is stamped on ``time.perf_counter``, which on Linux is CLOCK_MONOTONIC: one clock for
every process of the machine, so a producer's and a worker's timelines can be merged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

MODEL_WORK = ("encode", "tokenize")
"""The events that are the model's work (``Recorder.watch_encoder``): an in-process encode
tokenizes and runs the model too, so these are not the queue's cost."""

Event = tuple[str, str, float, float]
"""(side, what, start, end): ``what`` is a Redis command's name (EVALSHA, BLPOP...), a
pipeline's (BLPOP+EVALSHA) or a label."""


class Recorder:
    """Events of one or more clients and functions, appended in the order they end."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def wrap(self, side: str, what: str | None, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed as ``what`` (None: its first argument, upper-cased: a command's name)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                name = what if what is not None else str(args[0]).upper()
                event = (side, name, started, time.perf_counter())
                with self._lock:
                    self.events.append(event)

        return timed

    def watch(self, side: str, client: Any) -> None:
        """Time every command a redis-py ``client`` sends (scripts included: they go through
        ``execute_command`` too), and every pipeline it runs as one event named by its commands
        joined by '+' (``BLPOP+EVALSHA``)."""
        client.execute_command = self.wrap(side, None, client.execute_command)
        pipeline = client.pipeline

        def timed_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            def timed_execute(*a: Any, **k: Any) -> Any:
                name = "+".join(str(command[0][0]).upper() for command in pipe.command_stack)
                return self.wrap(side, name, execute)(*a, **k)

            pipe.execute = timed_execute
            return pipe

        client.pipeline = timed_pipeline

    def watch_encoder(self, side: str, encoder: Any) -> None:
        """Time an encoder's model work: ``encode`` and ``token_counts`` (the worker tokenizes a
        request once, when it counts its tokens, and the encode reuses that), as ``MODEL_WORK``."""
        encoder.encode = self.wrap(side, "encode", encoder.encode)
        encoder.token_counts = self.wrap(side, "tokenize", encoder.token_counts)
