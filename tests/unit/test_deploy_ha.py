"""The Redis Sentinel deployments, parsed and checked (Docker and a cluster cannot run
here): the Kubernetes overlay deploy/k8s/overlays/ha and compose's "ha" profile must
agree with each other, with the base, and with leadsync's redis+sentinel:// URL."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from producers.connect import parse_sentinel_url
from producers.contract import Keys
from tests.unit.test_deploy import (
    K8S,
    REDIS_CONF,
    compose,
    configmap_data,
    find,
    redis_directives,
    secret_keys,
    service,
)
from worker.settings import Settings

HA = K8S / "overlays" / "ha"
HA_SERVICES = {"redis-master", "redis-replica", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}  # fmt: skip
REDIS_HA = ("redis-master", "redis-replica", "redis-replica-2")
LEADSYNC_HA_SERVICES = {"worker-ha": "worker", "beat-ha": "beat", "api-ha": "api", "producer-ha": "producer"}  # fmt: skip


def docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((HA / name).read_text()) if doc]


def one(name: str, kind: str, object_name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in docs(name)
        if d["kind"] == kind and (object_name is None or d["metadata"]["name"] == object_name)
    ]
    assert len(found) == 1, (name, kind, object_name)
    return found[0]


def ha_url() -> str:
    url: str = one("secret-patch.yaml", "Secret", "leadsync-secrets")["stringData"][
        "LEADSYNC_REDIS_URL"
    ]
    return url


def script(configmap: str, key: str) -> str:
    source = "redis-ha.yaml" if configmap == "redis-ha" else "sentinel.yaml"
    text: str = one(source, "ConfigMap", configmap)["data"][key]
    return text


def sentinel_monitor(text: str) -> tuple[str, int]:
    """The master name and quorum of a ``sentinel monitor`` line."""
    match = re.search(r"sentinel monitor (\S+) \S+ 6379 (\d+)", text)
    assert match, "no sentinel monitor line"
    return match.group(1), int(match.group(2))


# --- Kubernetes: overlays/ha ---------------------------------------------------------------


def test_the_overlay_builds_on_the_base_and_adds_redis_with_sentinel() -> None:
    kustomization = yaml.safe_load((HA / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "../../base"
    assert kustomization["namespace"] == "leadsync"
    kinds = {(d["kind"], d["metadata"]["name"]) for f in ("redis-ha.yaml", "sentinel.yaml") for d in docs(f)}  # fmt: skip
    assert {
        ("StatefulSet", "redis"), ("Service", "redis"), ("PodDisruptionBudget", "redis"),
        ("StatefulSet", "redis-sentinel"), ("Service", "redis-sentinel"),
        ("PodDisruptionBudget", "redis-sentinel"),
    } <= kinds  # fmt: skip


def test_every_leadsync_process_gets_a_sentinel_url_naming_the_sentinel_pods() -> None:
    url = ha_url()
    assert Settings.from_env(redis_url=url).redis_url == url  # a valid setting
    parsed = parse_sentinel_url(url)
    sentinels = one("sentinel.yaml", "StatefulSet", "redis-sentinel")
    headless = one("sentinel.yaml", "Service", "redis-sentinel")
    assert headless["spec"]["clusterIP"] == "None"
    assert sentinels["spec"]["serviceName"] == headless["metadata"]["name"]
    expected = [
        (f"redis-sentinel-{i}.redis-sentinel.leadsync.svc.cluster.local", 26379)
        for i in range(sentinels["spec"]["replicas"])
    ]
    assert list(parsed.sentinels) == expected
    assert sentinels["spec"]["replicas"] == 3
    master, quorum = sentinel_monitor(script("redis-sentinel", "start-sentinel.sh"))
    assert parsed.master == master == "leadsync"
    assert quorum == 2
    assert parsed.password is not None, "the master's password is in the URL"
    assert parsed.sentinel_password is not None, "and the sentinels' own"
    # The base's Deployments read the URL from this Secret key: nothing else to patch.
    assert "LEADSYNC_REDIS_URL" in secret_keys()


def test_both_redis_pods_are_configured_as_a_database_like_deploy_redis_conf() -> None:
    conf = redis_directives(script("redis-ha", "redis.conf"))
    base = redis_directives(REDIS_CONF.read_text())
    for name in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy"):
        assert conf[name] == base[name], name
    assert conf["include"] == "/run/redis/runtime.conf"
    redis = one("redis-ha.yaml", "StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 3, "a master and two replicas"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_a_starting_redis_or_sentinel_asks_the_sentinels_for_the_master_first() -> None:
    for text in (
        script("redis-ha", "start-redis.sh"),
        script("redis-sentinel", "start-sentinel.sh"),
    ):
        assert "sentinel get-master-addr-by-name leadsync" in text
        assert 'MASTER="redis-0.' in text  # only when no sentinel answers (the first start)
    sentinel = script("redis-sentinel", "start-sentinel.sh")
    assert "sentinel resolve-hostnames yes" in sentinel
    assert "sentinel announce-hostnames yes" in sentinel
    assert "replica-announce-ip ${SELF}" in script("redis-ha", "start-redis.sh")


@pytest.mark.parametrize(("configmap", "key"), [("redis-ha", "start-redis.sh"), ("redis-sentinel", "start-sentinel.sh")])  # fmt: skip
def test_the_start_scripts_are_valid_shell(configmap: str, key: str, tmp_path: Path) -> None:
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no sh")
    path = tmp_path / key
    path.write_text(script(configmap, key))
    subprocess.run([shell, "-n", str(path)], check=True, timeout=10)


def test_redis_and_sentinel_pods_are_hardened_and_read_their_passwords_from_the_secret() -> None:
    keys = secret_keys() | set(one("secret-patch.yaml", "Secret", "leadsync-secrets")["stringData"])
    for source, name in (("redis-ha.yaml", "redis"), ("sentinel.yaml", "redis-sentinel")):
        pod = one(source, "StatefulSet", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["readinessProbe"]
            assert container["livenessProbe"]
            for item in container["env"]:
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "leadsync-secrets"
                    assert ref["key"] in keys, ref["key"]
            # No password on a command line (ps would show it).
            assert not any("PASSWORD" in word for word in container["command"])


def test_keda_reads_every_shard_through_the_sentinels() -> None:
    patch = one("keda-patch.yaml", "ScaledObject", "leadsync-worker")
    base = find("ScaledObject", "leadsync-worker")
    parsed = parse_sentinel_url(ha_url())
    keys = Keys(configmap_data()["LEADSYNC_KEY_PREFIX"])
    shards = int(configmap_data()["LEADSYNC_SHARDS"])
    triggers = patch["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [keys.stream(s) for s in range(shards)]
    # Same names as the base's triggers, so its scalingModifiers formula sums them.
    assert [t["name"] for t in triggers] == [t["name"] for t in base["spec"]["triggers"]]
    addresses = ", ".join(f"{host}:{port}" for host, port in parsed.sentinels)
    for trigger in triggers:
        assert trigger["type"] == "redis-sentinel-streams"
        metadata = trigger["metadata"]
        assert metadata["addresses"] == addresses
        assert metadata["sentinelMaster"] == parsed.master
        assert "consumerGroup" not in metadata, "XLEN, not XPENDING"
        assert int(metadata["streamLength"]) > 0
        assert all(isinstance(value, str) for value in metadata.values())
        assert trigger["authenticationRef"]["name"] == "leadsync-redis"
    auth = one("keda-patch.yaml", "TriggerAuthentication", "leadsync-redis")
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "tls", "ca", "sentinelPassword"}
    patched = set(one("secret-patch.yaml", "Secret", "leadsync-secrets")["stringData"])
    assert {ref["key"] for ref in refs.values()} <= secret_keys() | patched


# --- compose: the "ha" profile -------------------------------------------------------------


def start_script(name: str) -> str:
    """The ``sh -c`` script a compose service starts with."""
    command = service(name)["command"]
    assert command[:2] == ["sh", "-c"]
    text: str = command[2]
    return text


def test_compose_ha_profile_runs_a_master_two_replicas_and_three_sentinels() -> None:
    services = compose()["services"]
    assert HA_SERVICES | set(LEADSYNC_HA_SERVICES) <= set(services)
    for name in HA_SERVICES | set(LEADSYNC_HA_SERVICES):
        assert services[name]["profiles"] == ["ha"], name
        if name != "producer-ha":  # the one-shot demo
            assert services[name]["healthcheck"]["test"], name
    # `docker compose up` without a profile is unchanged.
    for name in ("redis", "worker", "beat", "api", "producer", "flower", "simulator"):
        assert "profiles" not in services[name], name


def test_compose_redis_servers_start_as_the_sentinels_say_and_announce_their_names() -> None:
    # One start for all three (tests/integration/test_deploy_ha.py runs it): ask the
    # sentinels for the master, replicate it unless it is this server, and only when
    # none answers take redis-master as the master. None names a master of its own.
    text = start_script("redis-master")
    for name in REDIS_HA:
        assert service(name)["command"] == service("redis-master")["command"], name
        assert service(name)["hostname"] == name
        assert (
            service(name)["volumes"][0] == "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro"
        )
    for sentinel in ("sentinel-1", "sentinel-2", "sentinel-3"):
        assert sentinel in text
    assert "sentinel get-master-addr-by-name leadsync" in text
    assert "MASTER=redis-master" in text
    assert '--replica-announce-ip "$$SELF"' in text  # $$: compose leaves $ to the shell
    assert 'exec redis-server "$$@"' in text
    # The replicas wait for the first master to be up: at the first start they follow it.
    for name in REDIS_HA[1:]:
        assert service(name)["depends_on"] == {"redis-master": {"condition": "service_healthy"}}


def test_compose_sentinels_share_one_config_and_announce_their_own_names() -> None:
    text = start_script("sentinel-1")
    for name in ("sentinel-2", "sentinel-3"):
        assert start_script(name) == text
        assert service(name)["hostname"] == name
    assert service("sentinel-1")["hostname"] == "sentinel-1"
    assert "SELF=$$(hostname)" in text  # $$: compose leaves $ to the shell
    assert "sentinel announce-ip $$SELF" in text
    # The master the other sentinels name, redis-master when none answers.
    assert "sentinel monitor leadsync $$MASTER 6379 2" in text
    assert "MASTER=redis-master" in text
    assert "exec redis-server /tmp/sentinel.conf --sentinel" in text


def test_compose_leadsync_ha_services_are_the_usual_ones_on_the_sentinel_url() -> None:
    for name, usual in LEADSYNC_HA_SERVICES.items():
        ha, plain = service(name), service(usual)
        assert ha["command"] == plain["command"], name
        url = ha["environment"]["LEADSYNC_REDIS_URL"]
        parsed = parse_sentinel_url(url)
        assert list(parsed.sentinels) == [(f"sentinel-{i}", 26379) for i in (1, 2, 3)]
        master, _ = sentinel_monitor(start_script("sentinel-1"))
        assert parsed.master == master
    assert service("worker-ha")["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert service("worker-ha")["healthcheck"] == service("worker")["healthcheck"]
    assert {"sentinel-1", "sentinel-2", "sentinel-3"} <= set(service("worker-ha")["depends_on"])
    assert service("api-ha")["ports"] != service("api")["ports"], "both can run at once"
