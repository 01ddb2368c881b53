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
ACL = K8S.parent / "redis-acl"
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


def ha_secret(name: str = "leadsync-secrets") -> dict[str, str]:
    data: dict[str, str] = one("secret-patch.yaml", "Secret", name)["stringData"]
    return data


def ha_url() -> str:
    return ha_secret()["LEADSYNC_REDIS_URL"]


def acl_users(*files: str) -> dict[str, list[str]]:
    """The users of deploy/redis-acl files: name -> rules (password placeholder included)."""
    users: dict[str, list[str]] = {}
    for name in files:
        for line in (ACL / name).read_text().splitlines():
            words = line.split()
            assert words[0] == "user", line
            assert words[1] not in users, f"{words[1]} twice"
            users[words[1]] = words[2:]
    return users


def placeholder(rules: list[str]) -> str:
    """The NAME of a user's ``>change-me-NAME`` password (render.sh's ACL_NAME_PASSWORD)."""
    (word,) = [w for w in rules if w.startswith(">")]
    assert word.startswith(">change-me-"), word
    return word.removeprefix(">change-me-")


def grants(rules: list[str]) -> list[str]:
    """A user's rules without ``on`` and its password."""
    return [w for w in rules if w != "on" and not w.startswith(">")]


def env_of(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A container's Secret-sourced variables: name -> (Secret, key)."""
    found = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            found[item["name"]] = (ref["name"], ref["key"])
    return found


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
    # Each process logs in to Redis as its own user and to the sentinels as
    # leadsync-discovery (deploy/redis-acl), with the passwords the Redis pods set up.
    secret, api_secret = ha_secret(), ha_secret("leadsync-api-secrets")
    api = parse_sentinel_url(api_secret["LEADSYNC_REDIS_URL"])
    assert (parsed.username, parsed.password) == ("leadsync-worker", secret["REDIS_WORKER_PASSWORD"])  # fmt: skip
    assert (api.username, api.password) == ("leadsync-api", api_secret["REDIS_API_PASSWORD"])
    for url in (parsed, api):
        assert url.sentinels == parsed.sentinels
        assert url.master == parsed.master
        assert url.sentinel_username == secret["REDIS_SENTINEL_USERNAME"] == "leadsync-discovery"
        assert url.sentinel_password == secret["REDIS_SENTINEL_PASSWORD"]
    # The base's Deployments read the URL from this Secret key: nothing else to patch.
    assert "LEADSYNC_REDIS_URL" in secret_keys()


def test_both_redis_pods_are_configured_as_a_database_like_deploy_redis_conf() -> None:
    conf = redis_directives(script("redis-ha", "redis.conf"))
    base = redis_directives(REDIS_CONF.read_text())
    for name in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy"):
        assert conf[name] == base[name], name
    assert conf["include"] == "/run/redis/runtime.conf"
    # The users, not one password: the default user is off (users.acl), replicas log in
    # as leadsync-replica.
    assert "requirepass" not in conf
    assert conf["aclfile"] == "/run/redis/users.acl"
    assert conf["masteruser"] == "leadsync-replica"
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
    keys = {
        name: secret_keys(name) | set(ha_secret(name))
        for name in ("leadsync-secrets", "leadsync-api-secrets")
    }
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
            for secret, key in env_of(container).values():
                # The API's own password lives in the API's Secret, the rest in the main one.
                assert key in keys[secret], (secret, key)
                assert (secret == "leadsync-api-secrets") == (key == "REDIS_API_PASSWORD")
            # No password on a command line (ps would show it).
            assert not any("PASSWORD" in word for word in container["command"])
            # The probes log in (the default user is off), and pass on PONG only:
            # redis-cli exits 0 on an error reply.
            for probe in ("readinessProbe", "livenessProbe"):
                command = container[probe]["exec"]["command"]
                assert command[:2] == ["sh", "-c"], command
                assert "--user leadsync-" in command[2], command
                assert "| grep -q" in command[2], command
                assert "PONG" in command[2], command


#: What the users of deploy/redis-acl/ha.acl and sentinel.acl may do, as shipped (a change
#: shows here). Replication: Redis's documented set for a replica's masteruser. Sentinel
#: on the Redis servers: Redis's documented set for ``sentinel auth-user``.
REPLICA_RULES = ["resetchannels", "resetkeys", "-@all", "+psync", "+replconf", "+ping"]
SENTINEL_RULES = [
    "resetkeys", "allchannels", "-@all", "+multi", "+slaveof", "+ping", "+exec",
    "+subscribe", "+config|rewrite", "+role", "+publish", "+info", "+client|setname",
    "+client|kill", "+script|kill",
]  # fmt: skip
#: Clients on the sentinels: read the master's (and replicas', sentinels') addresses and
#: hear of a switch (go-redis, which KEDA uses, subscribes); never SENTINEL SET, REMOVE,
#: MONITOR, FAILOVER, IS-MASTER-DOWN-BY-ADDR (a vote) nor PUBLISH (a forged hello).
DISCOVERY_RULES = [
    "resetchannels", "&+switch-master", "&+replica-reconf-done", "-@all", "+auth", "+hello",
    "+ping", "+subscribe", "+unsubscribe", "+sentinel|masters", "+sentinel|master",
    "+sentinel|get-master-addr-by-name", "+sentinel|replicas", "+sentinel|slaves",
    "+sentinel|sentinels",
]  # fmt: skip


def test_the_ha_acl_files_add_replication_and_sentinel_users_and_keep_default_off() -> None:
    servers = acl_users("users.acl", "ha.acl")
    assert servers["default"] == ["off"]
    assert grants(servers["leadsync-replica"]) == REPLICA_RULES
    assert grants(servers["leadsync-sentinel"]) == SENTINEL_RULES
    sentinels = acl_users("sentinel.acl")
    assert sentinels["default"] == ["off"]
    assert set(sentinels) == {"default", "leadsync-sentinel", "leadsync-discovery"}
    assert grants(sentinels["leadsync-discovery"]) == DISCOVERY_RULES
    # The sentinels log in to each other as the user they log in to Redis with.
    assert placeholder(sentinels["leadsync-sentinel"]) == placeholder(servers["leadsync-sentinel"])  # fmt: skip
    for users in (servers, sentinels):
        for name, rules in users.items():
            if name != "default":
                assert rules[0] == "on", name
                placeholder(rules)  # every password is a placeholder render.sh replaces


def test_the_overlay_ships_the_acl_files_and_every_pod_renders_the_users_it_serves() -> None:
    """The pods mount deploy/redis-acl (ConfigMap redis-acl, generated from the very files)
    and render them at start with a password from the Secrets for every placeholder,
    the example Secrets' values being those placeholders (so the example agrees with
    itself: the URLs' passwords are the ones the pods set up)."""
    kustomization = yaml.safe_load((HA / "kustomization.yaml").read_text())
    assert "../../../redis-acl" in kustomization["resources"]
    generator = yaml.safe_load((ACL / "kustomization.yaml").read_text())["configMapGenerator"]
    assert generator == [{"name": "redis-acl", "files": ["users.acl", "ha.acl", "sentinel.acl", "render.sh"]}]  # fmt: skip
    values = {name: ha_secret(name) for name in ("leadsync-secrets", "leadsync-api-secrets")}
    for source, name, files, script_text in (
        ("redis-ha.yaml", "redis", ("users.acl", "ha.acl"), script("redis-ha", "start-redis.sh")),
        ("sentinel.yaml", "redis-sentinel", ("sentinel.acl",), script("redis-sentinel", "start-sentinel.sh")),
    ):  # fmt: skip
        pod = one(source, "StatefulSet", name)["spec"]["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] in ("redis", "sentinel")]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["acl"] == "/etc/redis-acl"
        assert volumes["acl"]["configMap"]["name"] == "redis-acl"
        rendered = " ".join(f"/etc/redis-acl/{f}" for f in files)
        assert f"sh /etc/redis-acl/render.sh {rendered}" in script_text.replace("\\\n", "")
        env = env_of(container)
        needed = {placeholder(rules) for rules in acl_users(*files).values() if rules != ["off"]}
        needed.add("discovery")  # asking the sentinels for the master at start
        for user in needed:
            secret, key = env[f"ACL_{user.upper()}_PASSWORD"]
            assert values[secret][key] == f"change-me-{user}", (name, user)
        # A pod reads no password it does not use.
        assert {v for v in env if v.startswith("ACL_")} == {f"ACL_{u.upper()}_PASSWORD" for u in needed}  # fmt: skip
    # The API's own password sits in the API's Secret, beside its URL.
    assert env_of(one("redis-ha.yaml", "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0])["ACL_API_PASSWORD"] == ("leadsync-api-secrets", "REDIS_API_PASSWORD")  # fmt: skip


def test_replicas_and_sentinels_log_in_as_their_own_users() -> None:
    redis_start = script("redis-ha", "start-redis.sh")
    assert 'echo "masterauth ${ACL_REPLICA_PASSWORD}"' in redis_start
    assert "requirepass" not in redis_start
    sentinel = script("redis-sentinel", "start-sentinel.sh")
    for line in (
        "aclfile /run/sentinel/users.acl",
        "sentinel sentinel-user leadsync-sentinel",
        "sentinel sentinel-pass ${ACL_SENTINEL_PASSWORD}",
        "sentinel auth-user leadsync leadsync-sentinel",
        "sentinel auth-pass leadsync ${ACL_SENTINEL_PASSWORD}",
    ):
        assert line in sentinel, line
    assert "requirepass" not in sentinel
    # auth-user must follow the monitor line it refers to.
    assert sentinel.index("sentinel monitor leadsync") < sentinel.index("sentinel auth-user")
    # Asking for the master at start: as leadsync-discovery, and a refusal (which
    # redis-cli prints as the answer) is no master's name.
    for text in (redis_start, sentinel):
        assert "--user leadsync-discovery" in text
        assert 'REDISCLI_AUTH="${ACL_DISCOVERY_PASSWORD}"' in text
        assert 'case "${MASTER}" in *[!A-Za-z0-9.:-]*) MASTER="" ;; esac' in text


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
    assert set(refs) == {"username", "password", "tls", "ca", "sentinelUsername", "sentinelPassword"}  # fmt: skip
    patched = ha_secret()
    assert {ref["key"] for ref in refs.values()} <= secret_keys() | set(patched)
    # KEDA's own users: leadsync-keda on Redis (XLEN), leadsync-discovery on the sentinels.
    assert patched[refs["username"]["key"]] == "leadsync-keda"
    assert patched[refs["sentinelUsername"]["key"]] == "leadsync-discovery"


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
        assert service(name)["volumes"][:2] == [
            "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro",
            "./deploy/redis-acl:/etc/redis-acl:ro",
        ]
    for sentinel in ("sentinel-1", "sentinel-2", "sentinel-3"):
        assert sentinel in text
    assert "sentinel get-master-addr-by-name leadsync" in text
    assert "MASTER=redis-master" in text
    assert '--replica-announce-ip "$$SELF"' in text  # $$: compose leaves $ to the shell
    assert 'exec redis-server "$$@"' in text
    # The users, as in the overlay: default off, replicas as leadsync-replica, the
    # masterauth in a file (not an argument ps shows).
    assert "sh /etc/redis-acl/render.sh /etc/redis-acl/users.acl /etc/redis-acl/ha.acl > /tmp/users.acl" in text  # fmt: skip
    assert "--aclfile /tmp/users.acl" in text
    assert "--masteruser leadsync-replica --include /tmp/masterauth.conf" in text
    assert 'echo "masterauth $$ACL_REPLICA_PASSWORD" > /tmp/masterauth.conf' in text
    assert "--user leadsync-discovery" in text
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
    assert "sh /etc/redis-acl/render.sh /etc/redis-acl/sentinel.acl > /tmp/users.acl" in text
    for line in (
        "aclfile /tmp/users.acl",
        "sentinel sentinel-user leadsync-sentinel",
        "sentinel sentinel-pass $$ACL_SENTINEL_PASSWORD",
        "sentinel auth-user leadsync leadsync-sentinel",
        "sentinel auth-pass leadsync $$ACL_SENTINEL_PASSWORD",
    ):
        assert line in text, line
    assert service("sentinel-1")["volumes"] == ["./deploy/redis-acl:/etc/redis-acl:ro"]


def test_compose_ha_passwords_cover_every_user_and_agree_with_the_urls() -> None:
    """Every placeholder of the ACL files a server or sentinel renders has its password in
    the service's environment (the placeholders themselves, for the demo), and the
    leadsync services' URLs log in with those passwords."""
    for name, files in [*((n, ("users.acl", "ha.acl")) for n in REDIS_HA), *((f"sentinel-{i}", ("sentinel.acl",)) for i in (1, 2, 3))]:  # fmt: skip
        env = service(name)["environment"]
        needed = {placeholder(rules) for rules in acl_users(*files).values() if rules != ["off"]}
        needed.add("discovery")
        assert set(env) == {f"ACL_{u.upper()}_PASSWORD" for u in needed}, name
        for user in needed:
            assert env[f"ACL_{user.upper()}_PASSWORD"] == f"change-me-{user}", (name, user)
    for name in REDIS_HA:
        health = " ".join(service(name)["healthcheck"]["test"])
        assert "--user leadsync-exporter ping | grep -q PONG" in health
    health = " ".join(service("sentinel-1")["healthcheck"]["test"])
    assert "--user leadsync-discovery ping | grep -q PONG" in health


def test_compose_leadsync_ha_services_are_the_usual_ones_on_the_sentinel_url() -> None:
    for name, usual in LEADSYNC_HA_SERVICES.items():
        ha, plain = service(name), service(usual)
        assert ha["command"] == plain["command"], name
        url = ha["environment"]["LEADSYNC_REDIS_URL"]
        parsed = parse_sentinel_url(url)
        assert list(parsed.sentinels) == [(f"sentinel-{i}", 26379) for i in (1, 2, 3)]
        master, _ = sentinel_monitor(start_script("sentinel-1"))
        assert parsed.master == master
        # Its own user on Redis (the API's for the API and the demo producer: it
        # enqueues and reads outcomes), leadsync-discovery on the sentinels.
        user = "leadsync-api" if name in ("api-ha", "producer-ha") else "leadsync-worker"
        assert parsed.username == user, name
        assert parsed.password == f"change-me-{user.removeprefix('leadsync-')}"
        assert (parsed.sentinel_username, parsed.sentinel_password) == ("leadsync-discovery", "change-me-discovery")  # fmt: skip
    assert service("worker-ha")["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert service("worker-ha")["healthcheck"] == service("worker")["healthcheck"]
    assert {"sentinel-1", "sentinel-2", "sentinel-3"} <= set(service("worker-ha")["depends_on"])
    assert service("api-ha")["ports"] != service("api")["ports"], "both can run at once"
