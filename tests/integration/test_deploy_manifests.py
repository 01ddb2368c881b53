"""The deployment files run through the real tools available here: `kubectl kustomize`
renders the Kubernetes overlays, and `redis-server` loads deploy/redis.conf."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from tests.support.redis_server import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
NAMESPACE = "leadsync"


def kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


@pytest.mark.parametrize("overlay", ["", "staging", "overlays/ha"], ids=["base", "staging", "ha"])
def test_kustomize_renders_valid_objects_all_in_the_leadsync_namespace(overlay: str) -> None:
    docs = kustomize(K8S / overlay)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "leadsync"
        if not doc["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {kind for kind, _ in by_kind(docs)}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ScaledObject"} <= kinds


def test_production_base_has_no_simulator_and_staging_points_workers_at_it() -> None:
    base = by_kind(kustomize(K8S))
    staging = by_kind(kustomize(K8S / "staging"))
    assert ("Deployment", "marketo-sim") not in base
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert (kind, "leadsync-api") in base
        assert (kind, "leadsync-api") in staging
    assert ("Deployment", "marketo-sim") in staging
    endpoint = staging[("ConfigMap", "leadsync-config")]["data"]["LEADSYNC_MARKETO_ENDPOINT"]
    assert endpoint.startswith("http://marketo-sim:")
    # The patch changes only the endpoint.
    base_data = dict(base[("ConfigMap", "leadsync-config")]["data"])
    staging_data = dict(staging[("ConfigMap", "leadsync-config")]["data"])
    base_data.pop("LEADSYNC_MARKETO_ENDPOINT")
    staging_data.pop("LEADSYNC_MARKETO_ENDPOINT")
    assert base_data == staging_data


@pytest.fixture
def redis_with_deploy_conf(tmp_path: Path) -> Iterator[redis.Redis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    # Only the listening address and the data directory are overridden.
    process = subprocess.Popen(
        [binary, str(ROOT / "deploy" / "redis.conf"), "--port", str(port),
         "--bind", "127.0.0.1", "--dir", str(tmp_path), "--logfile", str(tmp_path / "log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "redis-server rejected deploy/redis.conf"
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def test_redis_server_accepts_deploy_conf_and_runs_as_a_durable_database(
    redis_with_deploy_conf: redis.Redis,
) -> None:
    client = redis_with_deploy_conf
    config = client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) > 0
    # A write lands in the append-only file.
    client.xadd("leadsync:{0}:outbox", {"p": "{}"})
    assert client.info("persistence")["aof_enabled"] == 1
