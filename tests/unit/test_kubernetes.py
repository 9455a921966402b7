"""The Kubernetes manifests under deploy/kubernetes: the core kinds validate against the
Kubernetes schema (kubernetes-validate, offline), the KEDA objects against the part of KEDA's CRD
schema they use, and the settings that must agree do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from embedq.protocol import Keys

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
CORE = {"Namespace", "Secret", "StatefulSet", "Service", "Deployment"}

STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "metadata": STRINGS,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {k: {"type": "string"} for k in ("parameter", "name", "key")},
                    },
                }
            },
        },
    },
}
REDIS_SCALER_REQUIRED = ("listName", "listLength")
"""KEDA's redis list scaler needs the list and the target length (and an address)."""


def documents() -> list[dict[str, Any]]:
    return [
        doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


@pytest.mark.parametrize(
    "doc",
    [d for d in documents() if d["kind"] in CORE],
    ids=lambda d: d["kind"] + "/" + d["metadata"]["name"],
)
def test_core_kinds_validate_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_keda_objects_validate_and_the_scaler_is_complete() -> None:
    scaled = by_kind("ScaledObject")
    jsonschema.validate(scaled, SCALED_OBJECT)
    jsonschema.validate(by_kind("TriggerAuthentication"), TRIGGER_AUTHENTICATION)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert all(meta.get(k) for k in REDIS_SCALER_REQUIRED) and (meta.get("address") or meta.get("host"))
        assert int(meta["listLength"]) >= 1 and int(meta.get("activationListLength", "0")) >= 0
    with pytest.raises(jsonschema.ValidationError):  # the schema check can fail
        jsonschema.validate({**scaled, "spec": {**scaled["spec"], "triggers": []}}, SCALED_OBJECT)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_settings_that_must_agree_do() -> None:
    worker = by_kind("Deployment", "embedq-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    threads = env["EMBED_THREADS"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == threads
    assert pod["terminationGracePeriodSeconds"] > float(env["EMBED_SHUTDOWN_TIMEOUT"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"] == ["embedq-worker", "health"]
    scaled = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    assert lists == [env["EMBED_QUEUE"], Keys(env["EMBED_QUEUE"]).bulk]  # questions and background
    secret = by_kind("Secret", "embedq-redis")
    auth = by_kind("TriggerAuthentication")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    api = by_kind("Deployment", "embedq-api")
    (api_container,) = api["spec"]["template"]["spec"]["containers"]
    assert api_container["command"][:2] == ["embedq", "serve"]
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert env_of(api_container)["EMBED_QUEUE"] == env["EMBED_QUEUE"]
    for c in (container, api_container):
        (url,) = [e for e in c["env"] if e["name"] == "REDIS_URL"]
        assert url["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def test_the_acl_secret_is_an_aclfile_redis_loads(tmp_path: Path) -> None:
    import shutil
    import socket
    import subprocess
    import time

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    acl = tmp_path / "users.acl"
    acl.write_text(by_kind("Secret", "embedq-redis-acl")["stringData"]["users.acl"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--aclfile", str(acl)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, username="embedq-api", password="change-me-api")
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        assert client.llen("embed:requests") == 0  # the producer role: LLEN of the queue
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.lrange("embed:requests", 0, -1)
        worker = redis.Redis(port=port, username="embedq-worker", password="change-me-worker")
        assert worker.lrange("embed:requests", 0, -1) == []
    finally:
        proc.kill()
        proc.wait(5)


def test_the_aclfile_is_what_embedq_acl_prints() -> None:
    from embedq.acl import AclRules

    secret = by_kind("Secret", "embedq-redis-acl")
    lines = secret["stringData"]["users.acl"].strip().splitlines()
    roles = {"embedq-worker": ("worker", "change-me-worker"), "embedq-api": ("producer", "change-me-api"),
             "embedq-bulk": ("bulk", "change-me-bulk")}  # fmt: skip
    for user, (role, password) in roles.items():
        line = next(ln for ln in lines if ln.startswith(f"user {user} "))
        assert line == AclRules(role).aclfile_line(user, password), f"{user}: regenerate with embedq acl"
