"""Request body limits applied while the body is read, before anything is buffered whole: a cap
per body, a cap on the bodies one process holds at once, and a deadline for a body to arrive."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import defaults
from .errors import send_error as respond


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (by its Content-Length, else while it
    streams), 503 when holding it would put this process's bodies over ``held_limit`` bytes,
    408 when it has not arrived ``timeout`` seconds after the headers. The bytes stay counted
    until the response is sent: parsing and answering a body is what costs memory."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int = defaults.API_MAX_BODY_BYTES,
        held_limit: int = defaults.API_BODIES_BYTES,
        timeout: float = defaults.API_BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.limit = limit
        self.held_limit = held_limit
        self.timeout = timeout
        self.held = 0
        """Bytes of bodies read or announced and not yet answered, over every request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"content-length")
        if raw is not None and not raw.strip().isdigit():
            await respond(send, 400, "Content-Length is not a number", "invalid_request_error", "bad_length")
            return
        declared = int(raw) if raw is not None else None
        if declared is not None and declared > self.limit:
            await self._too_large(send)
            return
        reserved = 0
        try:
            if declared is not None:
                if not self._reserve(declared):
                    await self._busy(send)
                    return
                reserved = declared
            messages: list[Message] = []
            seen = 0
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
                except TimeoutError:
                    await respond(
                        send, 408, f"the request body did not arrive within {self.timeout:g} s",
                        "invalid_request_error", "body_timeout",
                    )  # fmt: skip
                    return
                if message["type"] == "http.disconnect":
                    return
                messages.append(message)
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    await self._too_large(send)
                    return
                if declared is None and seen > reserved:
                    if not self._reserve(seen - reserved):
                        await self._busy(send)
                        return
                    reserved = seen
                if not message.get("more_body", False):
                    break

            async def replay() -> Message:
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
        finally:
            self.held -= reserved

    def _reserve(self, n: int) -> bool:
        if self.held + n > self.held_limit:
            return False
        self.held += n
        return True

    async def _too_large(self, send: Send) -> None:
        await respond(send, 413, f"request body over {self.limit} bytes", "invalid_request_error",
                      "request_too_large")  # fmt: skip

    async def _busy(self, send: Send) -> None:
        await respond(
            send, 503, f"this server holds {self.held_limit} bytes of request bodies already: retry shortly",
            "service_unavailable", "server_busy", retry_after=1,
        )  # fmt: skip
