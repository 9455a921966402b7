"""The front door's one settings object: environment variables (``embedq.defaults``), then flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..defaults import setting
from ..protocol import KINDS
from .auth import ApiKeys


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """The front door's settings: environment variables, then ``embedq serve`` flags."""

    redis_url: str = defaults.REDIS_URL
    queue: str = defaults.QUEUE
    """The default queue: requests that name no served model go there."""
    extra_queues: tuple[str, ...] = ()
    """More queues, each served by workers of one model: the OpenAI ``model`` field picks the
    queue whose workers serve it (``EMBED_API_QUEUES``, comma-separated)."""
    timeout: float = defaults.TIMEOUT_S
    kind: str = defaults.API_KIND
    """The kind of an OpenAI request's texts unless it says ``"embedq_kind"``."""
    max_inputs: int = defaults.API_MAX_INPUTS
    max_text_chars: int = defaults.MAX_TEXT_CHARS
    max_body_bytes: int = defaults.API_MAX_BODY_BYTES
    """The largest request body read; a larger one is refused by its Content-Length or as it streams."""
    bodies_bytes: int = defaults.API_BODIES_BYTES
    """Bytes of bodies held at once by this process: beyond, 503 before a body is read."""
    body_timeout: float = defaults.API_BODY_TIMEOUT_S
    """Seconds a body may take to arrive after its headers (slow bodies hold memory and sockets)."""
    keys: ApiKeys = field(default_factory=lambda: ApiKeys(()))
    """Who may call (``EMBED_API_KEYS``, ``EMBED_API_KEYS_FILE``); empty: anyone who reaches the port."""
    cache_url: str | None = None
    """The query cache's Redis (the workers' ``EMBED_CACHE_URL``): repeats answered from it."""

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue this front door routes to, the default first."""
        return tuple(dict.fromkeys((self.queue, *self.extra_queues)))

    @classmethod
    def from_env(cls, **overrides: Any) -> ApiSettings:
        """Settings from the environment (``embedq.defaults.ENV``), ``overrides`` (flags) on top."""
        values: dict[str, Any] = {
            "redis_url": setting("redis_url"),
            "queue": setting("queue"),
            "timeout": setting("timeout"),
            "kind": setting("api_kind"),
            "max_inputs": setting("api_max_inputs"),
            "max_text_chars": setting("max_text_chars"),
            "max_body_bytes": setting("api_max_body_bytes"),
            "bodies_bytes": setting("api_bodies_bytes"),
            "body_timeout": setting("api_body_timeout"),
            "keys": ApiKeys.load(setting("api_keys"), setting("api_keys_file")),
            "cache_url": setting("cache_url"),
            "extra_queues": tuple(q.strip() for q in setting("api_queues").split(",") if q.strip()),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["max_body_bytes"] <= 0 or values["bodies_bytes"] < values["max_body_bytes"]:
            raise ValueError("EMBED_API_MAX_BODY_BYTES must be > 0 and at most EMBED_API_BODIES_BYTES")
        if values["kind"] not in KINDS:
            raise ValueError(f"EMBED_API_KIND must be 'query' or 'passage', got {values['kind']!r}")
        return cls(**values)
