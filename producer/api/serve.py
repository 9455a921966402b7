"""``embedq serve``: settings from the environment and flags, the authentication policy, uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any

from .app import create_app
from .settings import ApiSettings

log = logging.getLogger("embedq.api")


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_refusal(settings: ApiSettings, host: str, no_auth: bool) -> str | None:
    """Why serving on ``host`` with these settings is refused, or None: a port that others can
    reach needs API keys, unless the operator says (``--no-auth``) that a gateway does that job."""
    if settings.keys or no_auth or is_loopback(host):
        return None
    return (
        f"embedq serve on {host} would let anyone who reaches the port use the fleet: give API keys "
        "(EMBED_API_KEYS='name:key,...' or EMBED_API_KEYS_FILE), or --no-auth (EMBED_API_NO_AUTH=1) "
        "when a gateway in front authenticates"
    )


def run(host: str, port: int, no_auth: bool, **overrides: Any) -> int:
    """Serve until stopped; 2 for settings that do not parse or an unauthenticated public port."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        settings = ApiSettings.from_env(**overrides)
    except ValueError as exc:
        print(f"embedq serve: {exc}", file=sys.stderr)
        return 2
    refusal = auth_refusal(settings, host, no_auth)
    if refusal:
        print(f"embedq serve: {refusal}", file=sys.stderr)
        return 2
    if not settings.keys:
        log.warning("no API keys: anyone who reaches %s:%d may call (set EMBED_API_KEYS)", host, port)
    else:
        names = ", ".join(name for name, _ in settings.keys.entries)
        log.info("API keys required (%d: %s)", len(settings.keys.entries), names)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
    return 0
