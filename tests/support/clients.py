"""Producer clients and exports for integration tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from embedq import EmbeddingClient

from .servers import ROOT, RedisServer, WorkerProcess, bundled_model_path


def client_for(server: RedisServer, worker: WorkerProcess, **options: object) -> EmbeddingClient:
    """A client of ``worker``'s queue with a timeout generous enough for a loaded test machine."""
    return EmbeddingClient.from_url(server.url, queue=worker.queue, timeout=20.0, **options)  # type: ignore[arg-type]


def export_model(out: Path, *args: str) -> Path:
    """``embedq-worker export`` of the bundled model into ``out`` (checked by the export itself)."""
    result = subprocess.run(
        [sys.executable, "-m", "embedq.worker", "export", bundled_model_path(), "--out", str(out), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "min cosine vs torch" in result.stdout
    return out
