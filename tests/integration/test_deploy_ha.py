"""The HA overlay (deploy/k8s/overlays/ha) through the real tools available here:
`kubectl kustomize` renders it, and its Redis and Sentinel start scripts and configs run
(with stand-ins for the DNS names a cluster would give): the config and users file each
script writes are the ones redis-server and `redis-server --sentinel` accept (the default
user off), and leadsync connects through that sentinel with the overlay's URL form, as
its own users. Compose's "ha" profile likewise: its Redis and Sentinel start scripts run
(Docker is not needed), and redis-server takes the arguments and files they give.
tests/integration/test_sentinel_acl.py runs a whole set (3 sentinels) through a
failover."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
import yaml

from producers.connect import redis_client
from tests.integration.test_deploy_manifests import K8S, by_kind, kustomize
from tests.support.redis_server import free_port
from tests.unit.test_deploy import COMPOSE, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HA = K8S / "overlays" / "ha"
ACL_DIR = ROOT / "deploy" / "redis-acl"
NAMESPACE = "ns"
#: Test passwords for the users' placeholders (deploy/redis-acl/render.sh's variables).
PASSWORDS = {
    f"ACL_{name.upper()}_PASSWORD": f"{name}-pw"
    for name in ("admin", "api", "worker", "keda", "exporter", "replica", "sentinel", "discovery")
}


def configmap(source: str, name: str) -> dict[str, str]:
    for doc in yaml.safe_load_all((HA / source).read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            data: dict[str, str] = doc["data"]
            return data
    raise AssertionError(f"no ConfigMap {name} in {source}")


def test_kustomize_renders_the_ha_overlay_with_sentinel_triggers_and_one_secret() -> None:
    base = by_kind(kustomize(K8S))
    ha = by_kind(kustomize(HA))
    scaled = ha[("ScaledObject", "leadsync-worker")]
    triggers = scaled["spec"]["triggers"]
    # The patch replaced the base's triggers whole: no redis-streams trigger is left.
    assert {t["type"] for t in triggers} == {"redis-sentinel-streams"}
    assert all("address" not in t["metadata"] for t in triggers)
    assert len(triggers) == len(base[("ScaledObject", "leadsync-worker")]["spec"]["triggers"])
    # Everything else of the ScaledObject is the base's (the scaling formula included).
    assert (
        scaled["spec"]["advanced"] == base[("ScaledObject", "leadsync-worker")]["spec"]["advanced"]
    )
    auth = ha[("TriggerAuthentication", "leadsync-redis")]["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in auth} == {
        "username",
        "password",
        "tls",
        "ca",
        "sentinelUsername",
        "sentinelPassword",
    }
    # The users' files, as one ConfigMap (name hashed) the Redis and sentinel pods mount.
    (acl,) = [doc for (kind, name), doc in ha.items() if kind == "ConfigMap" and name.startswith("redis-acl-")]  # fmt: skip
    for name in ("users.acl", "ha.acl", "sentinel.acl", "render.sh"):
        assert acl["data"][name] == (ACL_DIR / name).read_text(), name
    for name in ("redis", "redis-sentinel"):
        volumes = ha[("StatefulSet", name)]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "acl", "configMap": {"name": acl["metadata"]["name"]}} in volumes
    secret = ha[("Secret", "leadsync-secrets")]["stringData"]
    api_url = ha[("Secret", "leadsync-api-secrets")]["stringData"]["LEADSYNC_REDIS_URL"]
    assert api_url.startswith("redis+sentinel://"), "the API's own Secret names the sentinels"
    assert set(base[("Secret", "leadsync-secrets")]["stringData"]) < set(secret)
    assert secret["LEADSYNC_REDIS_URL"].startswith("redis+sentinel://")
    for kind, name in (("StatefulSet", "redis"), ("StatefulSet", "redis-sentinel")):
        assert ha[(kind, name)]["metadata"]["namespace"] == "leadsync"
    # The leadsync Deployments are the base's: they read the URL from the Secret.
    for name in ("leadsync-worker", "leadsync-beat", "leadsync-api", "leadsync-flower"):
        assert ha[("Deployment", name)]["spec"] == base[("Deployment", name)]["spec"]


# --- the start scripts, run ---------------------------------------------------------------


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


#: What redis-cli prints (to stdout, exit status 0) when the sentinel refuses the login.
REFUSED = "NOAUTH Authentication required."


def run_script(
    text: str,
    tmp_path: Path,
    hostname: str,
    master_from_sentinel: str | None = None,
    *,
    env: dict[str, str] | None = None,
) -> tuple[str, str, Path]:
    """Run a start script with stand-ins for redis-cli (the sentinel's answer, or none)
    and redis-server (records its arguments), deploy/redis-acl where the pods mount it and
    ``env`` (default: the test passwords); the config it wrote, the arguments, and the
    folder it wrote into (its users.acl)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(dir=tmp_path, prefix=f"run-{hostname}-"))
    answer = f"echo '{master_from_sentinel}'" if master_from_sentinel else "exit 1"
    stub(bin_dir, "redis-cli", answer + "\n")
    stub(bin_dir, "redis-server", f'echo "$@" > {run_dir}/args\n')
    script = run_dir / "start.sh"
    script.write_text(
        text.replace("/run/redis/", f"{run_dir}/")
        .replace("/run/sentinel/", f"{run_dir}/")
        .replace("/etc/redis-acl/", f"{ACL_DIR}/")
    )
    variables = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOSTNAME": hostname,
        "POD_NAMESPACE": NAMESPACE,
        **(PASSWORDS if env is None else env),
    }
    subprocess.run(["sh", str(script)], env=variables, check=True, timeout=30, capture_output=True)  # fmt: skip
    written = next(p for p in run_dir.iterdir() if p.suffix == ".conf")
    return written.read_text(), (run_dir / "args").read_text().strip(), run_dir


def name_of(pod: str) -> str:
    return f"{pod}.redis.{NAMESPACE}.svc.cluster.local"


def test_redis_pods_start_as_master_or_replica_of_whom_the_sentinels_name(tmp_path: Path) -> None:
    text = configmap("redis-ha.yaml", "redis-ha")["start-redis.sh"]
    # First start: no sentinel answers; redis-0 is the master, redis-1 its replica.
    first, args, run_dir = run_script(text, tmp_path, "redis-0")
    assert args == "/etc/redis/redis.conf"
    assert "requirepass" not in first  # the default user is off (users.acl)
    assert "masterauth replica-pw" in first
    assert f"replica-announce-ip {name_of('redis-0')}" in first
    assert "replicaof" not in first
    # The users file: users.acl then ha.acl, each password as its sha256, none in clear,
    # readable by the Redis user only.
    users = (run_dir / "users.acl").read_text()
    assert [line.split()[1] for line in users.splitlines()] == [
        "default", "leadsync-admin", "leadsync-api", "leadsync-worker", "leadsync-keda",
        "leadsync-exporter", "leadsync-replica", "leadsync-sentinel",
    ]  # fmt: skip
    for name in ("admin", "api", "worker", "keda", "exporter", "replica", "sentinel"):
        assert f" #{hashlib.sha256(f'{name}-pw'.encode()).hexdigest()} " in users, name
    assert "-pw" not in users
    assert "change-me" not in users
    assert stat.S_IMODE((run_dir / "users.acl").stat().st_mode) == 0o600
    second, _, _ = run_script(text, tmp_path, "redis-1")
    assert f"replicaof {name_of('redis-0')} 6379" in second
    # A refused login to the sentinels is no master's name (redis-cli prints the refusal
    # as if it were the answer): as when none answers.
    refused, _, _ = run_script(text, tmp_path, "redis-1", REFUSED)
    assert f"replicaof {name_of('redis-0')} 6379" in refused
    # After a failover to redis-1, a restarted redis-0 replicates it.
    back, _, _ = run_script(text, tmp_path, "redis-0", name_of("redis-1"))
    assert f"replicaof {name_of('redis-1')} 6379" in back
    # And redis-1 named as master by the sentinels stays master.
    master, _, _ = run_script(text, tmp_path, "redis-1", name_of("redis-1"))
    assert "replicaof" not in master


def test_a_pod_with_a_password_missing_does_not_start(tmp_path: Path) -> None:
    """A user left without a password would not be refused by Redis but open to an empty
    one (the sha256 of nothing): render.sh stops the start instead, naming the variable."""
    for configmap_name, source, key in (
        ("redis-ha", "redis-ha.yaml", "start-redis.sh"),
        ("redis-sentinel", "sentinel.yaml", "start-sentinel.sh"),
    ):
        text = configmap(source, configmap_name)[key]
        without = {**PASSWORDS, "ACL_SENTINEL_PASSWORD": ""}
        with pytest.raises(subprocess.CalledProcessError) as failed:
            run_script(text, tmp_path, "redis-0", env=without)
        assert b"ACL_SENTINEL_PASSWORD is unset or empty" in failed.value.stderr


def test_a_sentinel_monitors_the_master_its_peers_name(tmp_path: Path) -> None:
    text = configmap("sentinel.yaml", "redis-sentinel")["start-sentinel.sh"]
    fresh, args, run_dir = run_script(text, tmp_path, "redis-sentinel-0")
    assert f"sentinel monitor leadsync {name_of('redis-0')} 6379 2" in fresh
    assert (
        f"sentinel announce-ip redis-sentinel-0.redis-sentinel.{NAMESPACE}.svc.cluster.local"
        in fresh
    )
    assert "requirepass" not in fresh  # the default user is off (sentinel.acl)
    assert "sentinel auth-user leadsync leadsync-sentinel" in fresh
    assert "sentinel auth-pass leadsync sentinel-pw" in fresh
    assert "sentinel sentinel-pass sentinel-pw" in fresh
    users = (run_dir / "users.acl").read_text()
    assert [line.split()[1] for line in users.splitlines()] == ["default", "leadsync-sentinel", "leadsync-discovery"]  # fmt: skip
    assert "-pw" not in users
    assert args.endswith("--sentinel")
    later, _, _ = run_script(text, tmp_path, "redis-sentinel-2", name_of("redis-1"))
    assert f"sentinel monitor leadsync {name_of('redis-1')} 6379 2" in later
    refused, _, _ = run_script(text, tmp_path, "redis-sentinel-2", REFUSED)
    assert f"sentinel monitor leadsync {name_of('redis-0')} 6379 2" in refused


# --- the configs, run by the real redis-server ----------------------------------------------


def spawn(args: list[str], folder: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    return subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)  # fmt: skip


def poll(check: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if result:
                return result
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_the_overlay_configs_run_and_leadsync_connects_through_the_sentinel(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    redis_port, sentinel_port = free_port(), free_port()
    # The master: the ConfigMap's redis.conf with the runtime file redis-0 would write.
    runtime, _, written = run_script(
        configmap("redis-ha.yaml", "redis-ha")["start-redis.sh"], tmp_path, "redis-0"
    )
    runtime = runtime.replace(name_of("redis-0"), "127.0.0.1")
    (tmp_path / "runtime.conf").write_text(runtime)
    data = tmp_path / "data"
    data.mkdir()
    conf = configmap("redis-ha.yaml", "redis-ha")["redis.conf"]
    conf = conf.replace("dir /data", f"dir {data}").replace("port 6379", f"port {redis_port}")
    conf = conf.replace("bind 0.0.0.0", "bind 127.0.0.1").replace(
        "/run/redis/runtime.conf", str(tmp_path / "runtime.conf")
    )
    conf = conf.replace("/run/redis/users.acl", str(written / "users.acl"))
    (tmp_path / "redis.conf").write_text(conf)
    processes.append(spawn([str(tmp_path / "redis.conf")], tmp_path))
    master = redis.Redis(
        port=redis_port, username="leadsync-admin", password="admin-pw", decode_responses=True
    )
    poll(master.ping)
    config = master.config_get("*")
    assert (config["appendonly"], config["maxmemory-policy"]) == ("yes", "noeviction")
    assert (config["masteruser"], config["masterauth"]) == ("leadsync-replica", "replica-pw")
    # The default user is off: no login, with or without a password.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_port).set("x", 1)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_port, password="admin-pw").set("x", 1)

    # A sentinel: the config start-sentinel.sh writes, pointed at this master.
    generated, _, written = run_script(
        configmap("sentinel.yaml", "redis-sentinel")["start-sentinel.sh"],
        tmp_path,
        "redis-sentinel-0",
    )
    generated = (
        generated.replace(f"{name_of('redis-0')} 6379", f"127.0.0.1 {redis_port}")
        .replace(f"redis-sentinel-0.redis-sentinel.{NAMESPACE}.svc.cluster.local", "127.0.0.1")
        .replace("port 26379", f"port {sentinel_port}\nbind 127.0.0.1")
        .replace("dir /tmp", f"dir {tmp_path}")
        .replace(" 2\n", " 1\n")  # one sentinel here: quorum 1
        .replace("/run/sentinel/users.acl", str(written / "users.acl"))
    )
    (tmp_path / "sentinel.conf").write_text(generated)
    processes.append(spawn([str(tmp_path / "sentinel.conf"), "--sentinel"], tmp_path))
    sentinel = redis.Redis(
        port=sentinel_port,
        username="leadsync-discovery",
        password="discovery-pw",
        decode_responses=True,
    )
    # It watches the master as leadsync-sentinel (its connections are logged in so).
    state = poll(lambda: sentinel.sentinel_master("leadsync"))
    assert state["is_master"]
    assert not state["is_sdown"]
    users = poll(lambda: {c["user"] for c in master.client_list() if c["name"].startswith("sentinel-")})  # fmt: skip
    assert users == {"leadsync-sentinel"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=sentinel_port).ping()

    # leadsync reaches the master through it, with the overlay's URL form, as the worker.
    client = redis_client(
        f"redis+sentinel://leadsync-worker:worker-pw@127.0.0.1:{sentinel_port}/leadsync/0"
        "?sentinel_username=leadsync-discovery&sentinel_password=discovery-pw"
    )
    try:
        assert client.set("leadsync:probe", "1")
        assert client.acl_whoami() == "leadsync-worker"
        assert master.get("leadsync:probe") == "1"
    finally:
        client.close()
        master.close()
        sentinel.close()


# --- compose's "ha" profile: its start scripts, run -----------------------------------------


def compose_script(name: str) -> str:
    """The ``sh -c`` script of a compose service, as its shell sees it ($$ is compose's
    escape for $)."""
    command = yaml.safe_load(COMPOSE.read_text())["services"][name]["command"]
    assert command[:2] == ["sh", "-c"]
    text: str = command[2]
    return text.replace("$$", "$")


def compose_env(name: str) -> dict[str, str]:
    environment: dict[str, str] = yaml.safe_load(COMPOSE.read_text())["services"][name].get("environment", {})  # fmt: skip
    return {key: str(value) for key, value in environment.items()}


class Started(NamedTuple):
    args: list[str]  #: redis-server's arguments, with the container's /tmp as /tmp
    asked: list[str]  #: the hosts asked for the master
    logins: list[str]  #: "user password" each was asked as
    conf: str  #: the sentinel config written (empty for a Redis server)
    run_dir: Path  #: the container's /tmp (users.acl, masterauth.conf)


def run_compose_start(name: str, tmp_path: Path, master_from_sentinels: str | None = None) -> Started:  # fmt: skip
    """Run service ``name``'s start script as its container would (its hostname is its
    name, its environment the service's, deploy/redis-acl mounted) with stand-ins for
    redis-cli (every host answers ``master_from_sentinels``, or none answers) and
    redis-server."""
    bin_dir = Path(tempfile.mkdtemp(dir=tmp_path, prefix=f"bin-{name}-"))
    run_dir = Path(tempfile.mkdtemp(dir=tmp_path, prefix=f"run-{name}-"))
    answer = f"echo '{master_from_sentinels}'" if master_from_sentinels else "exit 1"
    # redis-cli ... --user USER -h HOST ...: note the host and the login, then answer.
    stub(
        bin_dir,
        "redis-cli",
        'while [ "$#" -gt 0 ]; do\n'
        f'  if [ "$1" = -h ]; then echo "$2" >> {run_dir}/asked; fi\n'
        f'  if [ "$1" = --user ]; then echo "$2 $REDISCLI_AUTH" >> {run_dir}/logins; fi\n'
        "  shift\n"
        f"done\n{answer}\n",
    )
    stub(bin_dir, "redis-server", f'for a in "$@"; do echo "$a"; done > {run_dir}/args\n')
    stub(bin_dir, "hostname", f"echo {name}\n")
    script = run_dir / "start.sh"
    script.write_text(
        compose_script(name)
        .replace("/tmp/", f"{run_dir}/")
        .replace("/etc/redis-acl/", f"{ACL_DIR}/")
    )
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **compose_env(name)}
    subprocess.run(["sh", str(script)], env=env, check=True, timeout=30)

    def lines(file: str) -> list[str]:
        path = run_dir / file
        return path.read_text().splitlines() if path.exists() else []

    conf = run_dir / "sentinel.conf"
    return Started(
        args=[a.replace(str(run_dir), "/tmp") for a in lines("args")],
        asked=lines("asked"),
        logins=lines("logins"),
        conf=conf.read_text() if conf.exists() else "",
        run_dir=run_dir,
    )


CONF = "/usr/local/etc/redis/redis.conf"
ROOT_CONF = str(ROOT / "deploy" / "redis.conf")
#: What every compose Redis server starts with before its name and master: the users
#: (default off) and the replicas' login to the master, its password in a file.
USERS = [CONF, "--aclfile", "/tmp/users.acl", "--masteruser", "leadsync-replica", "--include", "/tmp/masterauth.conf"]  # fmt: skip


def test_compose_redis_servers_start_as_master_or_replica_of_whom_the_sentinels_name(
    tmp_path: Path,
) -> None:
    # First start: no sentinel answers; redis-master is the master, the others replicate it.
    started = run_compose_start("redis-master", tmp_path)
    assert started.asked == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert set(started.logins) == {"leadsync-discovery change-me-discovery"}
    assert started.args == [*USERS, "--replica-announce-ip", "redis-master"]
    assert (started.run_dir / "masterauth.conf").read_text() == "masterauth change-me-replica\n"
    users = (started.run_dir / "users.acl").read_text()
    assert "user default off" in users
    assert "change-me" not in users
    assert f"user leadsync-replica on #{hashlib.sha256(b'change-me-replica').hexdigest()} " in users
    for replica in ("redis-replica", "redis-replica-2"):
        args = run_compose_start(replica, tmp_path).args
        assert args == [*USERS, "--replica-announce-ip", replica, "--replicaof", "redis-master", "6379"]  # fmt: skip
    # After a failover to redis-replica, a killed redis-master that starts again
    # replicates it (it never comes back as a second master), and so does redis-replica-2.
    for name in ("redis-master", "redis-replica-2"):
        started = run_compose_start(name, tmp_path, "redis-replica")
        assert started.asked == ["sentinel-1"]
        assert started.args == [*USERS, "--replica-announce-ip", name, "--replicaof", "redis-replica", "6379"]  # fmt: skip
    # The server the sentinels name starts as the master.
    args = run_compose_start("redis-replica", tmp_path, "redis-replica").args
    assert args == [*USERS, "--replica-announce-ip", "redis-replica"]
    # A refused login (printed by redis-cli as the answer) names no master.
    started = run_compose_start("redis-replica-2", tmp_path, REFUSED)
    assert started.asked == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert started.args[-2:] == ["redis-master", "6379"]


def test_a_compose_sentinel_monitors_the_master_its_peers_name(tmp_path: Path) -> None:
    started = run_compose_start("sentinel-2", tmp_path)
    assert started.asked == ["sentinel-1", "sentinel-3"], "a sentinel does not ask itself"
    assert set(started.logins) == {"leadsync-discovery change-me-discovery"}
    fresh = started.conf
    assert "sentinel monitor leadsync redis-master 6379 2" in fresh
    assert "sentinel announce-ip sentinel-2" in fresh
    assert "sentinel auth-pass leadsync change-me-sentinel" in fresh
    assert started.args[-1] == "--sentinel"
    users = (started.run_dir / "users.acl").read_text()
    assert [line.split()[1] for line in users.splitlines()] == ["default", "leadsync-sentinel", "leadsync-discovery"]  # fmt: skip
    later = run_compose_start("sentinel-1", tmp_path, "redis-replica").conf
    assert "sentinel monitor leadsync redis-replica 6379 2" in later
    assert "sentinel announce-ip sentinel-1" in later


def test_the_compose_start_arguments_run_a_master_and_its_replica(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """redis-server takes deploy/redis.conf with the arguments and files the start script
    gives (names and ports mapped to this machine), and the replica follows the master
    as leadsync-replica; the default user is refused."""
    ports = {"redis-master": free_port(), "redis-replica": free_port()}
    clients = {}
    for name, master in (("redis-master", None), ("redis-replica", "redis-master")):
        started = run_compose_start(name, tmp_path, master)
        args = [ROOT_CONF if a == CONF else a.replace("/tmp/", f"{started.run_dir}/") for a in started.args]  # fmt: skip
        if "--replicaof" in args:
            at = args.index("--replicaof")
            args[at + 1 : at + 3] = ["127.0.0.1", str(ports[master or ""])]
        folder = tmp_path / f"data-{name}"
        folder.mkdir()
        at_home = ["--port", str(ports[name]), "--bind", "127.0.0.1", "--dir", str(folder)]
        processes.append(spawn([*args, *at_home], folder))
        clients[name] = redis.Redis(
            port=ports[name],
            username="leadsync-admin",
            password=compose_env(name)["ACL_ADMIN_PASSWORD"],
            decode_responses=True,
        )
    try:
        poll(lambda: clients["redis-master"].info("replication")["connected_slaves"] == 1)
        assert clients["redis-replica"].config_get("replica-announce-ip") == {
            "replica-announce-ip": "redis-replica"
        }
        (replica,) = clients["redis-master"].client_list(_type="replica")
        assert replica["user"] == "leadsync-replica"
        clients["redis-master"].set("leadsync:probe", "1")
        assert poll(lambda: clients["redis-replica"].get("leadsync:probe")) == "1"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=ports["redis-master"]).ping()
    finally:
        for client in clients.values():
            client.close()
