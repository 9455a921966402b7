"""Test-side access to the local processes of ``embedq.tools.local``, run from the repository root
so that worker processes can load test encoders (``EMBED_ENCODER=tests.support...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from embedq.tools import local
from embedq.tools.local import RedisServer, bundled_model_path, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "RedisServer", "WorkerProcess", "bundled_model_path", "embedq", "free_port", "wait_until"]


class WorkerProcess(local.WorkerProcess):
    """A worker process started in the repository root."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("cwd", ROOT)
        super().__init__(*args, **kwargs)


def embedq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the ``embedq`` command (``python -m embedq.cli``) from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "embedq.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
