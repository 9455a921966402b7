"""Which optional dependencies (extras) a command needs, checked before it imports them, so a
missing one is a sentence naming the extra to install, not a traceback."""

from __future__ import annotations

import importlib.util
import sys


class MissingExtra(ImportError):
    """A command needs packages of an extra that is not installed."""


def require(extra: str, *modules: str, what: str = "this command") -> None:
    """Raise ``MissingExtra`` unless every module of ``modules`` can be imported."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, from the {extra!r} extra: "
            f"pip install '.[{extra}]' in a checkout of embedq"
        )


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import explicitly blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
