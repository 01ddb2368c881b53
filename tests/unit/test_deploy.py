"""The deployment files (compose, Dockerfile, Kubernetes, Redis config) parsed and checked.

Docker cannot run here, so these tests read the files: they must name only real settings,
real CLI options and real Kubernetes fields, and agree with each other.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from celery.bin.beat import beat as celery_beat_command
from celery.bin.worker import worker as celery_worker_command
from flower.options import default_options as flower_options

from producers.contract import Keys, validate_lead
from worker.settings import env_variables

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / "env.example"
REDIS_CONF = DEPLOY / "redis.conf"
LEADS_EXAMPLE = ROOT / "examples" / "leads.jsonl"
OPERATIONS_DOC = ROOT / "docs" / "operations-deploy.md"

#: The Kubernetes release whose schemas the manifests must satisfy (kubernetes-validate
#: bundles them, so this works offline).
KUBERNETES_VERSION = "1.30"
#: Celery's worker_soft_shutdown_timeout (research 1.6); the grace period must exceed it.
SOFT_SHUTDOWN_TIMEOUT_S = 25
#: Every compose service except the one-shot demo producer runs for good.
LONG_RUNNING_SERVICES = {"redis", "simulator", "worker", "beat", "flower", "api"}
KEDA_API = "keda.sh/v1alpha1"
LEADSYNC_NAME = re.compile(r"\bLEADSYNC_[A-Z0-9_]+\b")
FLOWER_NAME = re.compile(r"\bFLOWER_[A-Z0-9_]+\b")


# --- loading --------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    return services[name]


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name} under deploy/k8s")


def deployments() -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == "Deployment"]


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def configmap_data() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", "leadsync-config")["data"]
    return data


def secret_keys(name: str = "leadsync-secrets") -> set[str]:
    return set(find("Secret", name)["stringData"])


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not NAME=value: {line!r}"
        values[name] = value
    return values


def command_of(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def redis_directives(text: str) -> dict[str, str]:
    """redis.conf directives (the last one wins, as in Redis)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found[name.lower()] = value.strip()
    return found


def command_line_options(command: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    options: dict[str, str] = {}
    for index, word in enumerate(command):
        if word.startswith("--") and index + 1 < len(command):
            options[word[2:].lower()] = command[index + 1]
    return options


def unknown_flags(command: list[str], cli: Any) -> set[str]:
    """Flags after ``celery -A app <sub>`` that the click command ``cli`` does not define."""
    known = {opt for param in cli.params for opt in param.opts}
    return {word for word in command[4:] if word.startswith("-")} - known


def process_command(where: str, compose_service: str, deployment: str) -> list[str]:
    if where == "compose":
        return command_of(service(compose_service)["command"])
    command: list[str] = only_container(find("Deployment", deployment))["command"]
    return command


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- docker compose -------------------------------------------------------------------


def test_compose_defines_the_whole_demo_pipeline() -> None:
    assert {"redis", "worker", "beat", "flower", "simulator", "api", "producer"} <= set(
        compose()["services"]
    )


def test_compose_redis_runs_as_a_database_with_aof_and_noeviction() -> None:
    redis = service("redis")
    command = command_of(redis["command"])
    assert command[0] == "redis-server"
    # The effective config: the mounted file, then command-line overrides.
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in redis["volumes"]}
    assert mounts[command[1]] == "./deploy/redis.conf"
    effective = redis_directives(REDIS_CONF.read_text()) | command_line_options(command)
    assert effective["appendonly"] == "yes"
    assert effective["appendfsync"] == "everysec"
    assert effective["maxmemory-policy"] == "noeviction"
    # The data directory outlives the container.
    assert mounts["/data"] in compose()["volumes"]


def test_every_long_running_compose_service_has_a_healthcheck() -> None:
    for name in LONG_RUNNING_SERVICES:
        check = service(name).get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"


def test_compose_starts_services_only_after_what_they_need_is_healthy() -> None:
    assert service("worker")["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service("producer")["depends_on"]["worker"]["condition"] == "service_healthy"


def test_compose_worker_shuts_down_softly() -> None:
    worker = service("worker")
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    grace = worker["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > SOFT_SHUTDOWN_TIMEOUT_S


def test_compose_producer_enqueues_the_example_leads_and_waits() -> None:
    producer = service("producer")
    command = command_of(producer["command"])
    assert command[:2] == ["leadsync", "enqueue"]
    assert "--wait" in command
    host_dir, container_dir = producer["volumes"][0].split(":")[:2]
    assert Path(command[2]).parent == Path(container_dir)
    assert (ROOT / host_dir / Path(command[2]).name).resolve() == LEADS_EXAMPLE
    assert producer["restart"] == "no"


def test_compose_services_read_the_example_env_file() -> None:
    for name in ("worker", "beat", "flower", "simulator", "api", "producer"):
        assert service(name)["env_file"] == ["deploy/env.example"], name


def test_compose_publishes_ports_on_loopback_only() -> None:
    for name, spec in compose()["services"].items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"


# --- settings names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [COMPOSE, ENV_EXAMPLE, DOCKERFILE, OPERATIONS_DOC, *manifest_files()],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_leadsync_variable_named_in_deploy_files_is_a_real_setting(path: Path) -> None:
    unknown = set(LEADSYNC_NAME.findall(path.read_text())) - set(env_variables())
    assert not unknown, f"{path.name} names settings that worker/settings.py lacks: {unknown}"


@pytest.mark.parametrize(
    "path",
    [COMPOSE, ENV_EXAMPLE, OPERATIONS_DOC, *manifest_files()],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_flower_variable_named_in_deploy_files_is_a_real_flower_option(path: Path) -> None:
    names = {name.removeprefix("FLOWER_").lower() for name in FLOWER_NAME.findall(path.read_text())}
    assert all(name in flower_options for name in names), names


def test_env_example_values_are_valid_settings() -> None:
    from worker.settings import Settings

    values = env_example()
    fields = {
        name.removeprefix("LEADSYNC_").lower(): value
        for name, value in values.items()
        if name.startswith("LEADSYNC_")
    }
    settings = Settings(**fields)  # type: ignore[arg-type]
    assert settings.marketo_endpoint.startswith("http://simulator:8765/")
    assert settings.redis_url.startswith("redis://redis:6379/")


def test_configmap_values_are_valid_settings() -> None:
    from worker.settings import Settings

    fields = {
        name.removeprefix("LEADSYNC_").lower(): value for name, value in configmap_data().items()
    }
    settings = Settings(**fields, marketo_encryption_key="x")  # type: ignore[arg-type]
    assert settings.log_format == "json"


def test_secrets_stay_out_of_the_configmap() -> None:
    secret_names = {"LEADSYNC_MARKETO_ENCRYPTION_KEY", "LEADSYNC_REDIS_URL"}
    assert not secret_names & set(configmap_data())
    assert secret_names <= secret_keys()


# --- Kubernetes: every manifest -------------------------------------------------------


def core_manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Objects of Kubernetes itself; KEDA's and the Prometheus Operator's custom resources
    are checked field by field (here and in tests/unit/test_monitoring_files.py)."""
    custom = {KEDA_API, "monitoring.coreos.com/v1"}
    return [(path, doc) for path, doc in manifests() if doc["apiVersion"] not in custom]


@pytest.mark.parametrize(
    ("path", "doc"),
    core_manifests(),
    ids=lambda value: value.name if isinstance(value, Path) else value["metadata"]["name"],
)
def test_every_kubernetes_manifest_validates_against_the_kubernetes_schema(
    path: Path, doc: dict[str, Any]
) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    broken = json.loads(json.dumps(find("Deployment", "leadsync-worker")))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("folder", kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)))
def test_each_kustomization_lists_every_manifest_in_its_folder(folder: Path) -> None:
    kustomization = load_yaml(folder / "kustomization.yaml")
    listed = [entry for entry in kustomization.get("resources", []) if entry.endswith(".yaml")]
    patched = [patch["path"] for patch in kustomization.get("patches", []) if "path" in patch]
    on_disk = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed + patched) == on_disk
    for entry in kustomization.get("resources", []):
        assert (folder / entry).exists(), entry


def test_every_pod_runs_unprivileged_as_a_non_root_user() -> None:
    for deployment in deployments():
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        find("ServiceAccount", pod["serviceAccountName"])
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            # Celery and Flower write temporary files: /tmp must be a writable volume.
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, name
            assert container["resources"]["requests"], name


def test_every_secret_and_configmap_reference_resolves() -> None:
    for deployment in deployments():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    # The API has a Secret of its own (its Redis user's URL and nothing else).
                    api = deployment["metadata"]["name"] == "leadsync-api"
                    assert ref["name"] == ("leadsync-api-secrets" if api else "leadsync-secrets")
                    assert ref["key"] in secret_keys(ref["name"]), ref["key"]
                    assert ref["key"] == item["name"], "secret keys are named as their variables"
            for source in container.get("envFrom", []):
                find("ConfigMap", source["configMapRef"]["name"])


def test_images_and_versions_agree_across_compose_kubernetes_and_pyproject() -> None:
    version = pyproject()["project"]["version"]
    kustomization = load_yaml(K8S / "base" / "kustomization.yaml")
    assert kustomization["images"] == [
        {"name": "leadsync", "newName": "leadsync", "newTag": version}
    ]
    assert compose()["x-leadsync"]["image"] == f"leadsync:{version}"
    for deployment in deployments():
        assert only_container(deployment)["image"] == f"leadsync:{version}"


# --- Kubernetes: worker, beat, Flower -------------------------------------------------


def test_worker_deployment_shuts_down_softly_within_its_grace_period() -> None:
    worker = find("Deployment", "leadsync-worker")
    container = only_container(worker)
    assert container_env(container)["REMAP_SIGTERM"]["value"] == "SIGQUIT"
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
        SOFT_SHUTDOWN_TIMEOUT_S
    )


def test_worker_deployment_has_liveness_readiness_and_startup_probes() -> None:
    container = only_container(find("Deployment", "leadsync-worker"))
    # Liveness reads the pod's local heartbeat (no Redis): an outage restarts nothing.
    liveness = container["livenessProbe"]["exec"]["command"]
    assert liveness == ["leadsync", "doctor", "--liveness"]
    assert container["startupProbe"]["exec"]["command"] == liveness
    # Readiness is where Redis counts.
    assert container["readinessProbe"]["exec"]["command"] == ["leadsync", "doctor", "--readiness"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert str(ports["metrics"]) == configmap_data()["LEADSYNC_METRICS_PORT"]


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_worker_command_runs_the_celery_worker_on_the_leadsync_queue(where: str) -> None:
    command = process_command(where, "worker", "leadsync-worker")
    assert command[:4] == ["celery", "-A", "worker.app", "worker"]
    assert command[command.index("-Q") + 1] == "leadsync"
    assert command[command.index("--pool") + 1] == "prefork"
    assert "-E" in command, "task events feed Flower"
    assert not unknown_flags(command, celery_worker_command)


def test_worker_command_is_the_same_in_compose_and_kubernetes() -> None:
    assert process_command("compose", "worker", "leadsync-worker") == process_command(
        "kubernetes", "worker", "leadsync-worker"
    )


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_beat_runs_celery_beat_with_its_schedule_on_a_writable_path(where: str) -> None:
    command = process_command(where, "beat", "leadsync-beat")
    assert command[:4] == ["celery", "-A", "worker.app", "beat"]
    assert command[command.index("--schedule") + 1].startswith("/tmp/")
    assert not unknown_flags(command, celery_beat_command)


def test_beat_has_exactly_one_replica_and_never_two_during_a_rollout() -> None:
    beat = find("Deployment", "leadsync-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert not any(
        doc["kind"] == "ScaledObject"
        # (an overlay's patch of a ScaledObject carries only what it changes)
        and doc["spec"].get("scaleTargetRef", {}).get("name") == "leadsync-beat"
        for _, doc in manifests()
    )


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_flower_is_read_only_and_protected_by_basic_auth(where: str) -> None:
    command = process_command(where, "flower", "leadsync-flower")
    if where == "compose":
        assert env_example()["FLOWER_BASIC_AUTH"]
    else:
        container = only_container(find("Deployment", "leadsync-flower"))
        auth = container_env(container)["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
        assert auth == {"name": "leadsync-secrets", "key": "FLOWER_BASIC_AUTH"}
    assert command[:4] == ["celery", "-A", "worker.app", "flower"]
    assert "--read_only=true" in command
    for word in command[4:]:
        assert word.removeprefix("--").split("=")[0] in flower_options, word
    assert not any(word.startswith("--basic_auth") for word in command), "keep secrets out of argv"


def test_flower_service_selects_the_flower_pods_on_the_named_port() -> None:
    flower = find("Deployment", "leadsync-flower")
    svc = find("Service", "leadsync-flower")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == flower["spec"]["selector"]["matchLabels"]
    port_names = {p["name"] for p in only_container(flower)["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    assert only_container(flower)["readinessProbe"]["httpGet"]["path"] == "/healthcheck"


def test_pod_disruption_budget_covers_the_workers() -> None:
    pdb = find("PodDisruptionBudget", "leadsync-worker")
    worker = find("Deployment", "leadsync-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    # Workers are unready while Redis is down; a node drain must still move them.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- Kubernetes and compose: the HTTP API ----------------------------------------------


def api_options(command: list[str]) -> dict[str, str]:
    """``--name value`` pairs of ``leadsync api``; each must be an option of the command."""
    from typer.main import get_command

    from worker.cli import app

    api_command = get_command(app).commands["api"]  # type: ignore[attr-defined]
    assert command[:2] == ["leadsync", "api"]
    known = {opt for param in api_command.params for opt in param.opts}
    pairs = dict(zip(command[2::2], command[3::2], strict=True))
    assert set(pairs) <= known, set(pairs) - known
    return pairs


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_api_listens_on_every_interface_on_its_port(where: str) -> None:
    options = api_options(process_command(where, "api", "leadsync-api"))
    assert options["--host"] == "0.0.0.0"
    if where == "compose":
        published = {p.split(":")[-1] for p in service("api")["ports"]}
        assert published == {options["--port"]}
        assert "/readyz" in " ".join(command_of(service("api")["healthcheck"]["test"]))
    else:
        ports = {
            p["name"]: p["containerPort"]
            for p in only_container(find("Deployment", "leadsync-api"))["ports"]
        }
        assert str(ports["http"]) == options["--port"]


def test_the_api_command_is_the_same_in_compose_and_kubernetes() -> None:
    assert process_command("compose", "api", "leadsync-api") == process_command(
        "kubernetes", "api", "leadsync-api"
    )


def test_api_deployment_probes_liveness_on_healthz_and_readiness_on_readyz() -> None:
    container = only_container(find("Deployment", "leadsync-api"))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    annotations = find("Deployment", "leadsync-api")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


def test_the_api_scales_horizontally_behind_its_service_and_pdb() -> None:
    api = find("Deployment", "leadsync-api")
    assert api["spec"]["replicas"] >= 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = api["spec"]["selector"]["matchLabels"]
    svc = find("Service", "leadsync-api")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == labels
    port_names = {p["name"] for p in only_container(api)["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    pdb = find("PodDisruptionBudget", "leadsync-api")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["maxUnavailable"] == 1


def test_the_image_exposes_the_api_port() -> None:
    exposed = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "EXPOSE")
    port = only_container(find("Deployment", "leadsync-api"))["ports"][0]["containerPort"]
    assert str(port) in exposed.split()


def test_staging_simulator_service_matches_the_endpoint_workers_are_given() -> None:
    patch = load_yaml(K8S / "staging" / "configmap-patch.yaml")
    endpoint = patch["data"]["LEADSYNC_MARKETO_ENDPOINT"]
    svc = find("Service", "marketo-sim")
    port = svc["spec"]["ports"][0]["port"]
    assert endpoint == f"http://marketo-sim:{port}/soap/mktows/2_2"
    sim = only_container(find("Deployment", "marketo-sim"))
    assert sim["command"][:2] == ["leadsync", "sim"]
    assert sim["command"][sim["command"].index("--port") + 1] == str(port)


# --- KEDA -----------------------------------------------------------------------------


def test_keda_scales_the_worker_on_the_total_backlog_of_every_shard() -> None:
    scaled = find("ScaledObject", "leadsync-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "leadsync-worker",
    }
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]

    keys = Keys(configmap_data()["LEADSYNC_KEY_PREFIX"])
    shards = int(configmap_data()["LEADSYNC_SHARDS"])
    triggers = spec["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [keys.stream(s) for s in range(shards)]
    auth = find("TriggerAuthentication", "leadsync-redis")
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        # With a consumerGroup KEDA would count XPENDING and ignore streamLength.
        assert "consumerGroup" not in trigger["metadata"]
        assert int(trigger["metadata"]["streamLength"]) > 0
        assert all(isinstance(value, str) for value in trigger["metadata"].values())
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]

    modifiers = spec["advanced"]["scalingModifiers"]
    terms = [term.strip() for term in modifiers["formula"].split("+")]
    assert terms == [t["name"] for t in triggers], "the formula sums every shard"
    assert int(modifiers["target"]) > 0
    assert modifiers["metricType"] == "AverageValue"


def test_keda_logs_in_as_its_own_acl_user_over_tls_from_the_leadsync_secret() -> None:
    """As its own ACL user (username), over TLS when the Secret says so, with the CA."""
    auth = find("TriggerAuthentication", "leadsync-redis")
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    # The redis-streams scaler's TriggerAuthentication parameters (keda.sh/docs/scalers/
    # redis-streams): username, password, tls (enable|disable), ca, cert, key, keyPassword.
    assert set(refs) == {"username", "password", "tls", "ca"}
    for ref in refs.values():
        assert ref["name"] == "leadsync-secrets"
        assert ref["key"] in secret_keys()
    secret = find("Secret", "leadsync-secrets")["stringData"]
    assert secret[refs["tls"]["key"]] in ("enable", "disable")
    assert secret[refs["username"]["key"]] == "leadsync-keda"
    # tls in the TriggerAuthentication excludes enableTLS/unsafeSsl on the triggers.
    for trigger in find("ScaledObject", "leadsync-worker")["spec"]["triggers"]:
        assert not {"enableTLS", "unsafeSsl"} & set(trigger["metadata"])


def test_keda_manifests_use_only_known_fields() -> None:
    allowed_spec = {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "idleReplicaCount", "advanced", "triggers", "fallback",
        "initialCooldownPeriod",
    }  # fmt: skip
    allowed_trigger = {
        "type",
        "name",
        "metadata",
        "authenticationRef",
        "metricType",
        "useCachedMetrics",
    }
    scaled = find("ScaledObject", "leadsync-worker")
    assert set(scaled) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(scaled["spec"]) <= allowed_spec
    assert set(scaled["spec"]["advanced"]) <= {
        "horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers",
    }  # fmt: skip
    assert set(scaled["spec"]["advanced"]["scalingModifiers"]) <= {
        "formula", "target", "activationTarget", "metricType",
    }  # fmt: skip
    for trigger in scaled["spec"]["triggers"]:
        assert set(trigger) <= allowed_trigger
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    # The HPA behavior block is plain autoscaling/v2: check it with the Kubernetes schema.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "probe"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 2,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


# --- Dockerfile and build context -----------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_builds_on_python_311_slim() -> None:
    args = [rest for keyword, rest in dockerfile_instructions() if keyword == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER line"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}
    # The uid must match what the Kubernetes pods assert.
    worker = find("Deployment", "leadsync-worker")
    assert int(final_user) == worker["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    steps = dockerfile_instructions()
    copies = [i for i, (keyword, _) in enumerate(steps) if keyword == "COPY"]
    pyproject_at = next(i for i in copies if "pyproject.toml" in steps[i][1])
    source_at = next(i for i in copies if steps[i][1].startswith("worker"))
    install_at = next(
        i
        for i, (keyword, rest) in enumerate(steps)
        if keyword == "RUN" and "pip install -r" in rest
    )
    assert pyproject_at < install_at < source_at


def test_dockerfile_copies_every_package_pyproject_installs() -> None:
    found = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").split(".")[0] for pattern in found}
    copied = {
        rest.split()[0].rstrip("/")
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--")
    }
    assert packages <= copied, packages - copied


def test_every_path_the_dockerfile_copies_from_the_context_exists() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"the image build copies {source}, which is missing"


def test_dockerfile_bakes_in_no_secrets() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|ENCRYPTION_KEY|BASIC_AUTH", rest), rest


def test_dockerignore_keeps_local_state_and_credentials_out_of_the_build_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "tests"} <= patterns
    copied = {
        rest.split()[0]
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
    }
    assert not copied & patterns, "the Dockerfile copies something the context excludes"


# --- Redis config and example data ----------------------------------------------------


def test_redis_conf_keeps_every_write_and_never_evicts() -> None:
    directives = redis_directives(REDIS_CONF.read_text())
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert directives["maxmemory"], "a memory ceiling so that a runaway backlog is refused"


def test_example_leads_are_valid_and_use_reserved_example_domains_only() -> None:
    lines = [line for line in LEADS_EXAMPLE.read_text().splitlines() if line.strip()]
    assert 10 <= len(lines) <= 100
    for line in lines:
        lead = validate_lead(**json.loads(line))
        assert lead.email is not None
        assert lead.email.endswith("@example.com")


def test_the_example_secrets_log_in_as_the_users_of_the_shipped_acl_file() -> None:
    """Each component's URL (and KEDA's login) names its user in deploy/redis-acl/users.acl
    with that file's placeholder password."""
    users = {}
    for line in (DEPLOY / "redis-acl" / "users.acl").read_text().splitlines():
        words = line.split()
        assert words[0] == "user", "an ACL file holds user lines only (no comments)"
        users[words[1]] = next((w[1:] for w in words if w.startswith(">")), None)
    assert users["default"] is None, "the default user is off"
    worker = urlsplit(find("Secret", "leadsync-secrets")["stringData"]["LEADSYNC_REDIS_URL"])
    api = urlsplit(find("Secret", "leadsync-api-secrets")["stringData"]["LEADSYNC_REDIS_URL"])
    assert (worker.username, worker.password) == ("leadsync-worker", users["leadsync-worker"])
    assert (api.username, api.password) == ("leadsync-api", users["leadsync-api"])
    secret = find("Secret", "leadsync-secrets")["stringData"]
    assert users[secret["REDIS_USERNAME"]] == secret["REDIS_PASSWORD"]
