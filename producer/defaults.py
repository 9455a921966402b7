"""Every default of the light side (producers, ``embedq`` commands, the front door), named and
documented once, and the one reader of their environment variables.

The worker's own settings live in ``embedq.worker.settings`` and take the values they share
with producers (Redis URL, queue, text limit) from here, so the two sides cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REDIS_URL = "redis://localhost:6379/0"
"""Redis of the queue when neither ``REDIS_URL`` nor a flag names one."""
QUEUE = "embed:requests"
"""The online request list; its prefix (``embed``) names every other key of the deployment."""
TIMEOUT_S = 5.0
"""How long a producer call may go without progress; also each request's deadline."""
MAX_BATCH = 8
"""Texts per request (the design record's batch of 8); workers accept as many (EMBED_MAX_BATCH)."""
MAX_QUEUE = 10_000
"""Queue depth at which producers get ``QueueFull`` instead of adding more."""
MAX_TEXT_CHARS = 8192
"""Longest text accepted, in characters; a longer one is refused, never cut silently."""
WINDOW = 32
"""Most requests one call keeps queued or being encoded at once; the rest stream in as replies
come (``embedq.flow``: the window starts at ``WINDOW_START`` and follows the replies)."""
WINDOW_START = 2
"""Requests a long call sends before any reply has said how fast the fleet is."""
QUEUE_TARGET_SHARE = 0.25
"""A long call keeps its requests' queue wait under this share of its timeout (1.25 s at 5 s)."""
BATCH_BUDGET_MS = 500.0
"""Encode time one batch should cost: the workers' ``EMBED_BATCH_BUDGET_MS`` default, and what a
long call sizes its requests by."""
PUSH_SLICE = 1000
"""Payloads per enqueue script call (Lua's unpack has a stack limit)."""
CACHE_KINDS = ("query",)
"""Kinds the query cache holds by default: questions repeat, documents rarely do."""
STATUS_TIMEOUT_S = 5.0
"""Socket timeout of ``embedq status``'s reads."""
API_HOST = "127.0.0.1"
"""Where ``embedq serve`` listens (loopback unless told otherwise)."""
API_PORT = 8000
API_KIND = "query"
"""The kind of an OpenAI request's texts unless it says ``embedq_kind``."""
API_MAX_INPUTS = 2048
"""Most texts in one HTTP request (OpenAI's own limit)."""
API_MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body read (8 MiB: about 300,000 tokens of text, OpenAI's own per-request cap)."""
API_BODIES_BYTES = 64 * 1024 * 1024
"""Bytes of request bodies one front door process holds at once; a request that would go over it
is answered 503 before its body is read. Measured: 16 concurrent 7.4 MiB bodies (2,100 inputs
each) admitted 8 and answered 503 to 8, peaking the process at 145 MB (76 MB idle): well
inside the shipped pod's 512Mi, where one unbounded 100 MB body used to peak at 307 MB."""
API_BODY_TIMEOUT_S = 10.0
"""A request whose body has not fully arrived this long after its headers gets 408."""
KORQUAD = os.path.join("..", "shared", "data", "korquad")
"""Where the KorQuAD dev set is looked for, relative to the working directory (the checkout)."""


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); ``ValueError`` otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


@dataclass(frozen=True)
class EnvSetting:
    """One light-side setting: its environment variable, default and parser."""

    var: str
    default: Any
    parse: Callable[[str], Any] = str

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The variable's value parsed (empty counts as unset), else the default; ``ValueError``
        naming the variable for a value that does not parse."""
        env = os.environ if environ is None else environ
        raw = env.get(self.var)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError:
            raise ValueError(f"{self.var}={raw!r} is not valid") from None


ENV: dict[str, EnvSetting] = {
    "redis_url": EnvSetting("REDIS_URL", REDIS_URL),
    "queue": EnvSetting("EMBED_QUEUE", QUEUE),
    "timeout": EnvSetting("EMBED_TIMEOUT", TIMEOUT_S, float),
    "cache_url": EnvSetting("EMBED_CACHE_URL", None),
    "max_text_chars": EnvSetting("EMBED_MAX_TEXT_CHARS", MAX_TEXT_CHARS, int),
    "model": EnvSetting("EMBEDDING_MODEL", None),
    "api_host": EnvSetting("EMBED_API_HOST", API_HOST),
    "api_port": EnvSetting("EMBED_API_PORT", API_PORT, int),
    "api_kind": EnvSetting("EMBED_API_KIND", API_KIND),
    "api_queues": EnvSetting("EMBED_API_QUEUES", ""),
    "api_max_inputs": EnvSetting("EMBED_API_MAX_INPUTS", API_MAX_INPUTS, int),
    "api_max_body_bytes": EnvSetting("EMBED_API_MAX_BODY_BYTES", API_MAX_BODY_BYTES, int),
    "api_bodies_bytes": EnvSetting("EMBED_API_BODIES_BYTES", API_BODIES_BYTES, int),
    "api_body_timeout": EnvSetting("EMBED_API_BODY_TIMEOUT", API_BODY_TIMEOUT_S, float),
    "api_keys": EnvSetting("EMBED_API_KEYS", ""),
    "api_keys_file": EnvSetting("EMBED_API_KEYS_FILE", ""),
    "api_no_auth": EnvSetting("EMBED_API_NO_AUTH", False, parse_bool),
    "korquad": EnvSetting("EMBEDQ_KORQUAD", KORQUAD),
}
"""Setting name -> its variable, default and parser: every environment variable the light side
reads."""


def setting(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of light-side setting ``name``: its environment variable, else its default."""
    return ENV[name].read(environ)
