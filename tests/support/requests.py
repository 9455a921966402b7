"""Requests built by hand for tests, stamped on this host's clock: the test's Redis runs here,
so its TIME is this clock too."""

from __future__ import annotations

import time

from embedq.protocol import Request, new_request_id


def now_ms() -> int:
    """This host's time in ms (the same as a local Redis's TIME)."""
    return int(time.time() * 1000)


def make_request(
    *texts: str,
    kind: str = "query",
    timeout: float = 30.0,
    truncate: bool | None = None,
    model: str | None = None,
    fingerprint: str | None = None,
) -> Request:
    """A request for ``texts`` whose deadline is ``timeout`` seconds from now (negative: past),
    pinned to ``model`` / ``fingerprint`` if given."""
    now = now_ms()
    return Request(
        id=new_request_id(),
        kind=kind,
        texts=list(texts),
        deadline_ms=now + int(timeout * 1000),
        sent_ms=now,
        truncate=truncate,
        model=model,
        fingerprint=fingerprint,
    )
