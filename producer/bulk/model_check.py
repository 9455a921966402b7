"""One output, one model: every vector of a bulk job's output must come from the same model with
the same prefix, which the answering workers' heartbeats tell; a mix is refused, not written."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from ..connection import REDIS_DOWN
from ..protocol import Heartbeat, Keys
from .options import BulkError

log = logging.getLogger("embedq.bulk")


@dataclass(frozen=True)
class Model:
    """What made an output's vectors (recorded in its state and manifest)."""

    name: str
    dim: int
    prefix: str
    normalized: bool


class ModelCheck:
    """Remembers which model each answering worker serves; refuses a second one."""

    def __init__(self, client: redis.Redis, keys: Keys, kind: str, model: Model | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.kind = kind
        self.model = model
        """The output's model: from an earlier run's state, else from the first reply."""
        self._seen: dict[str, Model | None] = {}

    def check(self, worker: str, dim: int) -> None:
        """``BulkError`` if ``worker`` serves another model or prefix than the output holds."""
        if worker not in self._seen:
            try:
                raw = self.redis.get(self.keys.heartbeat(worker))
            except REDIS_DOWN:
                return  # asked again with its next reply
            try:
                info = Heartbeat.unpack(raw) if raw else None
            except ValueError:
                info = None
            self._seen[worker] = (
                Model(
                    name=info.model,
                    dim=info.dim or dim,
                    prefix=str(info.prefixes.get(self.kind, "")),
                    normalized=info.normalized,
                )
                if info
                else None
            )
        seen = self._seen[worker]
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
