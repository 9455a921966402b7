"""The worker's one settings object: defaults, then environment variables, then CLI flags."""

from __future__ import annotations

import os
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from embedq import defaults
from embedq.defaults import parse_bool
from embedq.protocol import Keys, Limits

DEFAULT_MODEL = "intfloat/multilingual-e5-large"


class SettingsError(ValueError):
    """A setting has a value the worker cannot run with."""


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a worker is configured with; each field has an env var (``ENV`` below)."""

    redis_url: str = defaults.REDIS_URL
    queue: str = defaults.QUEUE
    model: str = DEFAULT_MODEL
    served_name: str = ""
    """The name producers ask for this model by (the OpenAI ``model`` field, the clients' ``model=``
    pin, ``/v1/models``); empty: the hub id, or what a local path names (``worker/identity.py``)."""
    backend: str = "torch"
    """``torch``: sentence-transformers; ``onnx`` / ``openvino``: an export made by
    ``embedq-worker export`` (EMBEDDING_MODEL is its directory), served without torch."""
    device: str = "cpu"
    threads: int = 2
    max_batch: int = defaults.MAX_BATCH
    batch_wait_ms: float = 50.0
    """The longest a batch waits for more requests after its first arrived."""
    batch_policy: str = "adaptive"
    """``adaptive``: wait only while requests keep arriving; ``fixed``: always wait out the window."""
    batch_gap_ms: float = 6.0
    """Adaptive policy: stop waiting once no request arrived for this long."""
    max_text_chars: int = defaults.MAX_TEXT_CHARS
    max_request_bytes: int = 0
    """Largest raw request taken whole, checked in Redis before any decoding; 0: sized from the
    text limits (``max_batch`` texts of ``max_text_chars`` 4-byte characters). A larger one gets a
    ``request_too_large`` error and a dead letter, and costs the worker a few KB."""
    truncate: bool = True
    """A text longer than the model's token window: cut it as the model does, and say so in the
    reply (True), or refuse it with ``text_too_long`` (False). A request's ``truncate`` wins."""
    batch_budget_ms: float = defaults.BATCH_BUDGET_MS
    """The longest one encode should hold the worker, by the cost model calibrated at warm-up:
    a batch stops growing at it, and a single request over it is encoded in slices with waiting
    questions answered between them (a single text may take longer; 0: no cap). The default
    fits a full batch of 8 questions on multilingual-e5-large (about 420 ms on 2 threads) and
    bounds what a question waits behind a batch of documents."""
    bulk_every: int = 4
    """While questions keep coming, the background lane (bulk jobs, documents, multi-request
    calls) still gets one batch after this many online batches in a row: its guaranteed share."""
    bulk_max_batch: int = 8
    """Most texts in one bulk request, which is encoded as one batch. On 2 CPU cores texts/s
    stops growing at 8 while an online request's wait behind the batch keeps growing."""
    query_prefix: str | None = None
    """None: the model's own prompt, else ``query: `` for E5 models, else nothing."""
    passage_prefix: str | None = None
    reply_ttl: int = 60
    dead_max: int = 1000
    max_attempts: int = 3
    """Takes of one request that end without an answer (worker died, encode raised) before it is
    dead-lettered with an error reply."""
    heartbeat_ttl: float = 2.0
    """Seconds without a heartbeat after which a worker counts as dead and is reaped. Heartbeats
    come from a thread every quarter of this, so a long encode never looks like death, and a
    killed worker's requests are back in the queue well within a producer's 5 s timeout."""
    reap_interval: float = 0.5
    shutdown_timeout: float = 10.0
    """On SIGTERM: seconds to finish the current batch before exiting regardless."""
    encoder: str = ""
    """``module:callable`` building the encoder from these settings; empty: sentence-transformers."""
    worker_id: str = field(default_factory=_default_worker_id)
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."""
    log_format: str = "text"
    """``text`` for people, ``json`` (one object per line) for log shippers."""
    metrics_port: int = 0
    """Serve Prometheus metrics on this port; 0: off."""
    precision: str = "f32"
    """``f32`` (exact), or ``bf16`` with ``EMBED_BACKEND=openvino`` on a CPU with AVX512-BF16 or
    AMX: faster, near-exact, served only past the fidelity gate and under its own fingerprint."""
    precision_min_cosine: float = 0.9999
    """bf16's gate: every export probe's vector must reach this cosine against f32's."""
    alive_file: str = ""
    """A file the loop touches on every turn, for ``embedq-worker health --live`` (a liveness
    probe that does not depend on Redis); empty: off."""
    cache_url: str | None = None
    """The query cache's Redis (off when unset): each vector this worker encodes is stored there
    under the model's fingerprint, and producers given the same URL answer repeats from it. Use a
    Redis that may evict (``allkeys-lru`` with a ``maxmemory``): never the queue's Redis under
    ``noeviction``, which the worker refuses."""
    cache_ttl: int = 86400
    """Seconds a cached vector lives."""
    cache_kinds: str = "query"
    """Comma-separated kinds to cache: ``query`` (questions repeat) and/or ``passage``."""

    def __post_init__(self) -> None:
        checks = {
            "threads": self.threads >= 1,
            "backend": self.backend in ("torch", "onnx", "openvino"),
            "max_batch": self.max_batch >= 1,
            "batch_wait_ms": self.batch_wait_ms >= 0,
            "batch_policy": self.batch_policy in ("adaptive", "fixed"),
            "batch_gap_ms": self.batch_gap_ms >= 0,
            "max_text_chars": self.max_text_chars >= 1,
            "max_request_bytes": self.max_request_bytes >= 0,
            "bulk_max_batch": self.bulk_max_batch >= 1,
            "batch_budget_ms": self.batch_budget_ms >= 0,
            "bulk_every": self.bulk_every >= 1,
            "reply_ttl": self.reply_ttl >= 1,
            "dead_max": self.dead_max >= 1,
            "max_attempts": self.max_attempts >= 1,
            "heartbeat_ttl": self.heartbeat_ttl >= 0.5,
            "reap_interval": self.reap_interval > 0,
            "shutdown_timeout": self.shutdown_timeout > 0,
            "log_level": self.log_level.upper() in LOG_LEVELS,
            "log_format": self.log_format in ("text", "json"),
            "metrics_port": 0 <= self.metrics_port < 65536,
            "precision": self.precision == "f32" or (self.precision == "bf16" and self.backend == "openvino"),
            "precision_min_cosine": 0 < self.precision_min_cosine <= 1,
            "cache_ttl": self.cache_ttl >= 1,
            "cache_kinds": bool(self.cached_kinds)
            and all(k in ("query", "passage") for k in self.cached_kinds),
        }
        for name, ok in checks.items():
            if not ok:
                raise SettingsError(f"{name} (env {ENV[name]}) is out of range: {getattr(self, name)!r}")
        if not self.worker_id or any(c.isspace() for c in self.worker_id):
            raise SettingsError(f"worker_id must be a non-empty word, got {self.worker_id!r}")

    @property
    def cached_kinds(self) -> tuple[str, ...]:
        """``cache_kinds`` as a tuple."""
        return tuple(k.strip() for k in self.cache_kinds.split(",") if k.strip())

    @property
    def keys(self) -> Keys:
        """The Redis key names for this worker's queue."""
        return Keys(self.queue)

    @property
    def limits(self) -> Limits:
        """What one online request may carry."""
        return Limits(
            max_texts=self.max_batch, max_text_chars=self.max_text_chars, max_bytes=self.max_request_bytes
        )

    @property
    def bulk_limits(self) -> Limits:
        """What one bulk request may carry."""
        return Limits(
            max_texts=self.bulk_max_batch,
            max_text_chars=self.max_text_chars,
            texts_setting=ENV["bulk_max_batch"],
            max_bytes=self.max_request_bytes,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from environment variables, with ``overrides`` (CLI flags) on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in ENV.items():
            if var in env:
                values[name] = _parse(name, var, env[var], _PARSERS[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


ENV: dict[str, str] = {
    "redis_url": "REDIS_URL",
    "queue": "EMBED_QUEUE",
    "model": "EMBEDDING_MODEL",
    "served_name": "EMBED_SERVED_NAME",
    "backend": "EMBED_BACKEND",
    "device": "EMBED_DEVICE",
    "threads": "EMBED_THREADS",
    "max_batch": "EMBED_MAX_BATCH",
    "batch_wait_ms": "EMBED_BATCH_WAIT_MS",
    "batch_policy": "EMBED_BATCH_POLICY",
    "batch_gap_ms": "EMBED_BATCH_GAP_MS",
    "max_text_chars": "EMBED_MAX_TEXT_CHARS",
    "max_request_bytes": "EMBED_MAX_REQUEST_BYTES",
    "truncate": "EMBED_TRUNCATE",
    "bulk_max_batch": "EMBED_BULK_MAX_BATCH",
    "batch_budget_ms": "EMBED_BATCH_BUDGET_MS",
    "bulk_every": "EMBED_BULK_EVERY",
    "query_prefix": "EMBED_QUERY_PREFIX",
    "passage_prefix": "EMBED_PASSAGE_PREFIX",
    "reply_ttl": "EMBED_REPLY_TTL",
    "dead_max": "EMBED_DEAD_MAX",
    "max_attempts": "EMBED_MAX_ATTEMPTS",
    "heartbeat_ttl": "EMBED_HEARTBEAT_TTL",
    "reap_interval": "EMBED_REAP_INTERVAL",
    "shutdown_timeout": "EMBED_SHUTDOWN_TIMEOUT",
    "encoder": "EMBED_ENCODER",
    "worker_id": "EMBED_WORKER_ID",
    "log_level": "EMBED_LOG_LEVEL",
    "log_format": "EMBED_LOG_FORMAT",
    "metrics_port": "EMBED_METRICS_PORT",
    "precision": "EMBED_PRECISION",
    "precision_min_cosine": "EMBED_PRECISION_MIN_COSINE",
    "alive_file": "EMBED_ALIVE_FILE",
    "cache_url": "EMBED_CACHE_URL",
    "cache_ttl": "EMBED_CACHE_TTL",
    "cache_kinds": "EMBED_CACHE_KINDS",
}
"""Setting name -> environment variable."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _base_type(kind: Any) -> type:
    """The type a setting holds (``X | None`` as X): bool, int, float or str."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    if base not in (bool, int, float, str):
        raise TypeError(f"no parser for settings of type {kind!r}")
    return typing.cast(type, base)


FIELD_TYPES: dict[str, type] = {
    name: _base_type(kind) for name, kind in typing.get_type_hints(Settings).items() if name in ENV
}
"""Setting name -> the type of its value, from the field's real annotation (env and flags parse by it)."""

_PARSERS: dict[str, Callable[[str], Any]] = {
    name: parse_bool if kind is bool else typing.cast(Callable[[str], Any], kind)
    for name, kind in FIELD_TYPES.items()
}
"""Setting name -> how its environment variable is parsed."""


def _parse(name: str, var: str, raw: str, parser: Callable[[str], Any]) -> Any:
    try:
        return parser(raw)
    except ValueError:
        raise SettingsError(f"{var}={raw!r} is not a valid {name}") from None
