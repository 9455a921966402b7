"""API keys for the front door: who may call it, checked before a byte of the body is read.

Keys come from ``EMBED_API_KEYS`` (``name:key`` pairs, comma- or newline-separated) and/or
``EMBED_API_KEYS_FILE`` (the same, a pair per line, ``#`` comment lines: a mounted Secret). A caller
sends ``Authorization: Bearer <key>`` (what every OpenAI SDK sends). Only SHA-256 digests are
kept, every digest is compared in constant time, and a key's *name*, never the key, reaches
logs and metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import send_error

MIN_KEY_CHARS = 16
"""A shorter key is refused at start: it could be guessed."""
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OPEN_PATHS = frozenset({"/healthz"})
"""Paths answered without a key: the orchestrator's readiness probe."""


@dataclass(frozen=True)
class ApiKeys:
    """The keys that may call the front door, as (name, SHA-256 digest) pairs."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def load(cls, keys: str = "", keys_file: str = "") -> ApiKeys:
        """The keys of ``keys`` (``EMBED_API_KEYS``) and of the file ``keys_file`` together
        (either may be empty); ``ValueError`` naming where a malformed, short or repeated one is."""
        entries = entries_of(keys, "EMBED_API_KEYS")
        if keys_file:
            try:
                text = Path(keys_file).read_text()
            except OSError as exc:
                raise ValueError(f"EMBED_API_KEYS_FILE {keys_file}: {exc.strerror}") from exc
            entries += entries_of(text, f"EMBED_API_KEYS_FILE {keys_file}")
        names = [n for n, _ in entries]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"API key name {repeated[0]!r} is given twice")
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def identify(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, or None; every digest is compared, in constant
        time, so the answer's timing says nothing of which key came close."""
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found = None
        for name, known in self.entries:
            if hmac.compare_digest(digest, known):
                found = name
        return found


def entries_of(text: str, source: str) -> list[tuple[str, bytes]]:
    """(name, digest) pairs from ``name:key`` items, comma- or newline-separated; a line that
    starts with ``#`` is a comment (a key may hold ``#`` but not ``,``)."""
    entries: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for item in line.split(","):
            if not item.strip():
                continue
            name, sep, key = (part.strip() for part in item.partition(":"))
            if not sep or not NAME.match(name):
                raise ValueError(f"{source} line {number}: each key is 'name:key', a name of [A-Za-z0-9_.-]")
            if len(key) < MIN_KEY_CHARS:
                raise ValueError(f"{source} line {number}: key {name!r} is under {MIN_KEY_CHARS} characters")
            entries.append((name, hashlib.sha256(key.encode()).digest()))
    return entries


class Authenticate:
    """ASGI middleware: 401 in OpenAI's shape unless the request carries a known key (the
    paths in ``OPEN_PATHS`` excepted); the key's name goes into the request's state."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if not header:
            await refuse(send, "no API key: send 'Authorization: Bearer <key>'")
            return
        name = self.keys.identify(presented.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            await refuse(send, "incorrect API key provided")
            return
        scope.setdefault("state", {})["key_name"] = name
        await self.app(scope, receive, send)


async def refuse(send: Send, message: str) -> None:
    """A 401 in OpenAI's shape (``invalid_api_key``), with ``WWW-Authenticate: Bearer``."""
    await send_error(send, 401, message, "invalid_request_error", "invalid_api_key",
                     headers={"www-authenticate": "Bearer"})  # fmt: skip
