"""The Kubernetes manifests under deploy/kubernetes: the core kinds validate against the
Kubernetes schema (kubernetes-validate, offline), the KEDA objects against the part of KEDA's CRD
schema they use, and the settings that must agree do."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from embedq.protocol import Keys

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
CORE = {"Namespace", "Secret", "StatefulSet", "Service", "Deployment", "NetworkPolicy"}

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
        assert all(meta.get(k) for k in REDIS_SCALER_REQUIRED)
        assert meta.get("address") or meta.get("host") or meta.get("addressFromEnv")
        assert int(meta["listLength"]) >= 1 and int(meta.get("activationListLength", "0")) >= 0
    with pytest.raises(jsonschema.ValidationError):  # the schema check can fail
        jsonschema.validate({**scaled, "spec": {**scaled["spec"], "triggers": []}}, SCALED_OBJECT)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) of every workload."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"], c)
        for d in documents()
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_the_settings_that_must_agree_do() -> None:
    worker = by_kind("Deployment", "embedq-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    threads = env["EMBED_THREADS"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == threads
    assert pod["terminationGracePeriodSeconds"] > float(env["EMBED_SHUTDOWN_TIMEOUT"])
    # liveness is the loop's own (a Redis outage restarts no worker); readiness needs Redis
    assert container["readinessProbe"]["exec"]["command"] == ["embedq-worker", "health"]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"] == ["embedq-worker", "health", "--live"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(env["EMBED_ALIVE_FILE"]).parent) in mounts  # writable under a read-only root
    scaled = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    assert lists == [env["EMBED_QUEUE"], Keys(env["EMBED_QUEUE"]).bulk]  # questions and background
    for trigger in scaled["spec"]["triggers"]:  # KEDA watches the Redis the workers use
        assert trigger["metadata"]["addressFromEnv"] in env
    secret = by_kind("Secret", "embedq-redis")
    auth = by_kind("TriggerAuthentication")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    api = by_kind("Deployment", "embedq-api")
    (api_container,) = api["spec"]["template"]["spec"]["containers"]
    assert api_container["command"][:2] == ["embedq", "serve"]
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert env_of(api_container)["EMBED_QUEUE"] == env["EMBED_QUEUE"]
    keys_file = Path(env_of(api_container)["EMBED_API_KEYS_FILE"])
    assert str(keys_file.parent) in {m["mountPath"] for m in api_container["volumeMounts"]}


def test_every_address_and_credential_comes_from_the_one_secret_and_each_role_has_its_own() -> None:
    secret = by_kind("Secret", "embedq-redis")["stringData"]
    users = set()
    for name, _, c in containers():
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "valueFrom" in e}
        for ref in refs.values():
            assert ref["key"] in secret or ref["name"] != "embedq-redis", (name, ref)
        env = env_of(c)
        if "REDIS_URL" in env:
            url = env["REDIS_URL"]
            assert "@" in url and "svc" not in url, f"{name}: the address belongs in the Secret"
            parts = ("REDIS_SCHEME", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_ADDRESS")
            assert all(f"$({v})" in url for v in parts), name
            users.add(refs["REDIS_USERNAME"]["key"])
    assert users == {"worker-username", "api-username"}  # no two workloads share a Redis user
    assert len({secret[k] for k in secret if k.endswith("-password")}) == len(
        [k for k in secret if k.endswith("-password")]
    )


def test_every_container_runs_locked_down_from_a_pinned_image() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    pinned = {i["name"]: i for i in kustomization["images"]}
    for name, pod, c in containers():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        image = c["image"]
        if image in pinned:
            tag = pinned[image]["newTag"]
            assert "/" in pinned[image]["newName"], f"{image}: name a registry"
        else:
            tag = image.rpartition(":")[2] if ":" in image else ""
        assert re.match(r"\d+\.\d+", tag), f"{name}: {image} needs a version tag, got {tag!r}"


def test_redis_refuses_writes_before_its_container_is_killed() -> None:
    redis_set = by_kind("StatefulSet", "redis")
    (c,) = redis_set["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb") and int(maxmemory[:-2]) * 2**20 < 0.8 * 2**30  # under the 1Gi limit
    assert c["resources"]["limits"]["memory"] == "1Gi"


def test_only_labelled_clients_reach_the_api_and_redis() -> None:
    policies = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    api = policies["api-from-chatbots"]["spec"]
    assert api["podSelector"]["matchLabels"] == {"app": "embedq-api"}
    assert api["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]
    redis_from = policies["redis-from-embedq"]["spec"]["ingress"][0]["from"]
    labelled = [p["podSelector"]["matchLabels"] for p in redis_from if "podSelector" in p]
    for name, _, _ in containers():
        if name == "redis":
            continue
        labels = by_kind("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in labelled), name


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
    secret = by_kind("Secret", "embedq-redis")["stringData"]
    roles = {"worker": "worker", "api": "producer", "bulk": "bulk", "keda": "status"}
    assert lines[0] == "user default off"
    for who, role in roles.items():
        user, password = secret[f"{who}-username"], secret[f"{who}-password"]
        line = next(ln for ln in lines if ln.startswith(f"user {user} "))
        assert line == AclRules(role).aclfile_line(user, password), f"{user}: regenerate with embedq acl"


def test_the_sentinel_variant_of_keda_validates_and_matches_the_default() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "variants" / "keda-sentinel.yaml").read_text()) if d]
    auth = next(d for d in docs if d["kind"] == "TriggerAuthentication")
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    jsonschema.validate(auth, TRIGGER_AUTHENTICATION)
    jsonschema.validate(scaled, SCALED_OBJECT)
    params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert {"addresses", "sentinelMaster", "username", "password"} <= params
    default = by_kind("ScaledObject")
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    assert lists == [t["metadata"]["listName"] for t in default["spec"]["triggers"]]
    assert all(t["type"] == "redis-sentinel" for t in scaled["spec"]["triggers"])
    # the pods' URL, built from the Secret, is a Sentinel URL embedq reads
    from embedq.topology import SentinelUrl

    url = "redis+sentinel://embedq-worker:pw@s1:26379,s2:26379,s3:26379/embedq/0"
    assert SentinelUrl.parse(url).service == "embedq"


def test_the_cluster_variant_of_keda_watches_hash_tagged_lists() -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "variants" / "keda-cluster.yaml").read_text()) if d]
    auth = next(d for d in docs if d["kind"] == "TriggerAuthentication")
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    jsonschema.validate(auth, TRIGGER_AUTHENTICATION)
    jsonschema.validate(scaled, SCALED_OBJECT)
    assert {"addresses", "username", "password"} <= {
        ref["parameter"] for ref in auth["spec"]["secretTargetRef"]
    }
    keys = Keys("{embed}:requests")
    assert keys.slotted
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    assert lists == [keys.queue, keys.bulk]
    assert all(t["type"] == "redis-cluster" for t in scaled["spec"]["triggers"])
