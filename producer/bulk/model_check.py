"""One output, one model: every vector of a bulk job's output must come from the same model, which
each reply names (its fingerprint: weights or export, backend, prefixes, pooling, window) and the
answering workers' heartbeats describe; a mix is refused, not written. Once known, the
fingerprint pins every further request of the job (resumed runs too)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

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
    fingerprint: str = ""
    """The model's fingerprint ("" from workers older than model identity)."""
    served_name: str = ""

    def same_as(self, other: Model) -> bool:
        """The same vectors: the same fingerprint when both have one, else name, dim and prefix."""
        if self.fingerprint and other.fingerprint:
            return self.fingerprint == other.fingerprint
        return (self.name, self.dim, self.prefix, self.normalized) == (
            other.name,
            other.dim,
            other.prefix,
            other.normalized,
        )


class ModelCheck:
    """Remembers which model each answering worker serves; refuses a second one."""

    def __init__(self, client: redis.Redis, keys: Keys, kind: str, model: Model | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.kind = kind
        self.model = model
        """The output's model: from an earlier run's state, else from the first reply."""
        self._seen: dict[str, Model | None] = {}

    @property
    def fingerprint(self) -> str | None:
        """The output's fingerprint once known: every further request is pinned to it."""
        return self.model.fingerprint if self.model is not None and self.model.fingerprint else None

    def check(self, worker: str, dim: int, fingerprint: str = "", served_name: str = "") -> None:
        """``BulkError`` if ``worker`` (which answered with ``fingerprint``) serves another model
        or prefix than the output holds."""
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
                    fingerprint=info.fingerprint,
                    served_name=info.served_name,
                )
                if info
                else None
            )
        seen = self._seen[worker]
        if seen is None:
            if not fingerprint:
                return  # it stopped before we could ask, and its reply names no model
            seen = Model(name=served_name, dim=dim, prefix="", normalized=True, served_name=served_name)
        if fingerprint:  # what the reply itself says wins over the heartbeat read earlier
            seen = replace(seen, fingerprint=fingerprint, served_name=served_name or seen.served_name)
        if self.model is None:
            self.model = seen
            log.info(
                "vectors from model %s (dim %d, prefix %r, fingerprint %s)",
                seen.served_name or seen.name, seen.dim, seen.prefix, seen.fingerprint or "-",
            )  # fmt: skip
        elif not self.model.fingerprint and seen.fingerprint and self.model.same_as(seen):
            self.model = replace(self.model, fingerprint=seen.fingerprint)  # an older run's record
        elif not self.model.same_as(seen):
            raise BulkError(
                f"worker {worker} serves {seen} but this output holds vectors of {self.model}: one output "
                "must come from one model and prefix. Stop the odd workers (embedq status) and run again"
            )
