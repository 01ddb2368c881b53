"""The monitoring files parsed and checked without promtool (tests/integration/
test_monitoring.py runs promtool): the Kubernetes copies are current, every alert has a
runbook section and tests, the objects select what they should, compose's "monitoring"
profile wires Prometheus and Grafana to the files."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from tests.support.monitoring import (
    ALERTS,
    ALERTS_TEST,
    MONITORING,
    OVERLAY,
    ROOT,
    alerts,
    dashboard,
    load_yaml,
    panel_queries,
    panels,
    recorded_names,
    rule_groups,
    runbook_anchors,
    used_metric_names,
)
from tests.unit.test_deploy import compose, configmap_data, env_example, find, only_container
from worker.limits import LimiterState
from worker.obs import metrics
from worker.settings import Settings, default_quota_share

MONITORING_SERVICES = {"prometheus", "grafana", "redis-exporter"}


def render_module() -> ModuleType:
    path = MONITORING / "render-k8s"
    loader = importlib.machinery.SourceFileLoader("render_k8s", str(path))
    spec = importlib.util.spec_from_loader("render_k8s", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def overlay_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(OVERLAY / name)
    return doc


# --- the Kubernetes copies ---------------------------------------------------------------


def test_the_committed_kubernetes_copies_are_what_render_k8s_writes(tmp_path: Path) -> None:
    render_module().render(tmp_path)
    for name in ("prometheusrule.yaml", "dashboard-configmap.yaml"):
        assert (tmp_path / name).read_text() == (OVERLAY / name).read_text(), (
            f"{name} is stale: run deploy/monitoring/render-k8s"
        )


def test_the_prometheusrule_holds_exactly_the_rules_of_alerts_yml() -> None:
    rule = overlay_doc("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"] == load_yaml(ALERTS)


def test_the_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar() -> None:
    configmap = overlay_doc("dashboard-configmap.yaml")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"leadsync.json": (MONITORING / "grafana" / "leadsync.json").read_text()}  # fmt: skip


def test_the_overlay_builds_on_the_base_and_lists_the_monitoring_objects() -> None:
    kustomization = overlay_doc("kustomization.yaml")
    assert kustomization["resources"][0] == "../../base"
    assert kustomization["namespace"] == "leadsync"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in map(overlay_doc, kustomization["resources"][1:])}  # fmt: skip
    assert kinds == {
        ("PodMonitor", "leadsync-worker"), ("ServiceMonitor", "leadsync-api"),
        ("PodMonitor", "redis"), ("PrometheusRule", "leadsync"),
        ("ConfigMap", "leadsync-dashboard"),
    }  # fmt: skip


def job_relabeling(endpoint: dict[str, Any]) -> str:
    (relabeling,) = endpoint["relabelings"]
    assert set(relabeling) <= {"targetLabel", "replacement", "action"}
    assert relabeling["targetLabel"] == "job"
    job: str = relabeling["replacement"]
    return job


def test_the_podmonitor_scrapes_the_worker_pods_metrics_port_as_job_leadsync_worker() -> None:
    monitor = overlay_doc("podmonitor.yaml")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "jobLabel", "namespaceSelector"}  # fmt: skip
    worker = find("Deployment", "leadsync-worker")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
    ports = {p["name"]: p["containerPort"] for p in only_container(worker)["ports"]}
    assert ports[endpoint["port"]] == Settings.model_fields["metrics_port"].default
    assert endpoint["path"] == "/metrics"
    assert job_relabeling(endpoint) == "leadsync-worker"


def test_the_servicemonitor_scrapes_the_api_service_as_job_leadsync_api() -> None:
    monitor = overlay_doc("servicemonitor.yaml")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "jobLabel", "namespaceSelector"}
    service = find("Service", "leadsync-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()  # fmt: skip
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert job_relabeling(endpoint) == "leadsync-api"


HA = ROOT / "deploy" / "k8s" / "overlays" / "ha"


def exporter_patch() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(HA / "redis-exporter-patch.yaml")
    return doc


def exporter_container() -> dict[str, Any]:
    (container,) = exporter_patch()["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "redis-exporter"
    return container


def test_the_ha_overlay_runs_redis_exporter_beside_each_redis_pod() -> None:
    """The Redis memory alerts' figures in Kubernetes: a sidecar of the HA overlay's Redis
    StatefulSet, reading its own pod's Redis, hardened like the Redis container, with its
    login from the overlay's Secret (never on a command line)."""
    kustomization = load_yaml(HA / "kustomization.yaml")
    assert {"path": "redis-exporter-patch.yaml"} in kustomization["patches"]
    patch = exporter_patch()
    redis = next(
        doc
        for doc in load_yaml_all(HA / "redis-ha.yaml")
        if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "redis"
    )
    assert (patch["kind"], patch["metadata"]["name"]) == ("StatefulSet", "redis")
    assert patch["spec"]["selector"] == redis["spec"]["selector"]
    assert patch["spec"]["serviceName"] == redis["spec"]["serviceName"]
    template = patch["spec"]["template"]
    assert template["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "redis"
    container = exporter_container()
    assert container["image"] == compose()["services"]["redis-exporter"]["image"]
    env = {item["name"]: item for item in container["env"]}
    assert env["REDIS_ADDR"]["value"] == "redis://127.0.0.1:6379"
    secret = next(
        doc
        for doc in load_yaml_all(HA / "secret-patch.yaml")
        if doc["metadata"]["name"] == "leadsync-secrets"
    )
    for name in ("REDIS_USER", "REDIS_PASSWORD"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "leadsync-secrets"
        assert ref["key"] in secret["stringData"], ref["key"]
    assert "command" not in container
    assert "args" not in container
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 9121}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9121"
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_the_redis_podmonitor_scrapes_the_exporter_as_the_job_the_rules_read() -> None:
    monitor = overlay_doc("redis-podmonitor.yaml")
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "jobLabel", "namespaceSelector"}  # fmt: skip
    template = exporter_patch()["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()  # fmt: skip
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in exporter_container()["ports"]}
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    assert job_relabeling(endpoint) == "redis"
    # Every job a rule names is a job some monitor of the overlay sets.
    jobs = {
        job_relabeling(endpoint)
        for name, key in (
            ("podmonitor.yaml", "podMetricsEndpoints"),
            ("redis-podmonitor.yaml", "podMetricsEndpoints"),
            ("servicemonitor.yaml", "endpoints"),
        )
        for endpoint in overlay_doc(name)["spec"][key]
    }
    assert set(re.findall(r'job="([^"]+)"', ALERTS.read_text())) <= jobs


def test_the_redis_memory_alerts_read_only_the_redis_job() -> None:
    for alert in alerts():
        expr = alert["expr"]
        for name in ("redis_memory_used_bytes", "redis_memory_max_bytes"):
            for found in re.finditer(rf"\b{name}\b(\{{[^}}]*\}})?", expr):
                assert found.group(1) == '{job="redis"}', (alert["alert"], found.group())


# --- the rules ---------------------------------------------------------------------------


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/operations-deploy.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"docs/operations-deploy.md has no section {name}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in load_yaml(ALERTS_TEST)["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "never seen firing"
    assert names - quiet == set(), "never seen quiet"


#: Each recording rule -> the gauge the workers export for its setting, and the setting.
CONFIG_RULES = {
    "leadsync:config:daily_quota": ("leadsync_quota_share_calls", "daily_quota"),
    "leadsync:config:flush_interval_seconds": (
        "leadsync_flush_interval_seconds",
        "flush_interval_s",
    ),
    "leadsync:config:memory_high_water": ("leadsync_memory_high_water_ratio", "memory_high_water"),
}
#: Recording rules that are constants of the rules themselves, not settings.
CONSTANT_RULES = {"leadsync:config:oldest_entry_floor_seconds": "vector(120)"}


def test_the_config_rules_read_what_the_workers_export_and_fall_back_to_the_defaults() -> None:
    """leadsync:config:* stand for settings: they take the value the ticking workers
    export (so the thresholds follow the deployment, whose ConfigMap ships another flush
    interval than the default) and the setting's default until a worker has ticked."""
    rules = {
        rule["record"]: rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
        if "record" in rule
    }
    assert set(rules) == set(CONFIG_RULES) | set(CONSTANT_RULES)
    for record, expr in CONSTANT_RULES.items():
        assert rules[record].strip() == expr, record
    fields = Settings.model_fields
    defaults = {
        "daily_quota": default_quota_share("soap"),
        "flush_interval_s": fields["flush_interval_s"].default,
        "memory_high_water": fields["memory_high_water"].default,
    }
    for record, (gauge, setting) in CONFIG_RULES.items():
        expr = " ".join(rules[record].split())
        assert gauge in expr, record
        assert "and on(job, instance) (leadsync_last_tick_timestamp_seconds > 0)" in expr
        fallback = re.search(r"\bor vector\(([0-9.]+)\)$", expr)
        assert fallback is not None, record
        assert float(fallback.group(1)) == defaults[setting], record


def shipped_settings() -> dict[str, Settings]:
    """The settings as deploy/ ships them: the Kubernetes ConfigMap and deploy/env.example."""
    secrets = {"marketo_encryption_key": "x", "marketo_user_id": "u"}
    configmap = {k.removeprefix("LEADSYNC_").lower(): v for k, v in configmap_data().items()}
    example = {
        k.removeprefix("LEADSYNC_").lower(): v
        for k, v in env_example().items()
        if k.startswith("LEADSYNC_")
    }
    return {
        "k8s": Settings(**(configmap | secrets)),  # type: ignore[arg-type]
        "env.example": Settings(**(example | secrets)),  # type: ignore[arg-type]
    }


def test_a_tick_exports_the_settings_the_rules_read_as_deploy_ships_them() -> None:
    for where, settings in shipped_settings().items():
        metrics.observe_tick(settings.flush_interval_s, settings.memory_high_water)
        metrics.observe_limiter(limiter_state(quota_limit=settings.daily_quota))
        assert gauge_value("leadsync_flush_interval_seconds") == settings.flush_interval_s, where
        assert gauge_value("leadsync_memory_high_water_ratio") == settings.memory_high_water
        assert gauge_value("leadsync_quota_share_calls") == settings.daily_quota, where
        assert abs(gauge_value("leadsync_last_tick_timestamp_seconds") - time.time()) < 5
    # What the audit found: the shipped flush interval is not the default the rules
    # assumed, which is why they read the exported one.
    assert shipped_settings()["k8s"].flush_interval_s != Settings.model_fields["flush_interval_s"].default  # fmt: skip


def limiter_state(quota_limit: int) -> LimiterState:
    return LimiterState(
        calls_in_window=0, slots_in_use=0, quota_used_today=0, quota_limit=quota_limit,
        pace_wait_s=0.0, cooldown_remaining_s=0.0, cooldown_reason=None, hold_reason=None,
        hold_since=None, next_probe_in_s=None,
    )  # fmt: skip


def gauge_value(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


_TICKING_CHILD = """
import sys, time
from worker.obs import metrics
metrics.observe_tick(float(sys.argv[1]), 0.85)
"""


def test_the_last_tick_is_the_newest_of_the_pool_processes(tmp_path: Path) -> None:
    """Under Celery prefork the tick runs in whichever pool process takes it: the main
    process serves the newest tick of any of them (multiprocess mode ``mostrecent``), and
    a process that never ticked does not pull it back to 0."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    idle = "from worker.obs import metrics\nmetrics.observe_pace(0)"
    subprocess.run([sys.executable, "-c", idle], env=env, check=True)
    for flush in ("2", "2"):
        subprocess.run([sys.executable, "-c", _TICKING_CHILD, flush], env=env, check=True)
        time.sleep(0.05)
    subprocess.run([sys.executable, "-c", idle], env=env, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    last = registry.get_sample_value("leadsync_last_tick_timestamp_seconds")
    assert last is not None
    assert abs(last - time.time()) < 10
    assert registry.get_sample_value("leadsync_flush_interval_seconds") == 2


def test_recording_rules_the_rules_and_panels_use_are_defined() -> None:
    used = {name for name in used_metric_names() if ":" in name}
    assert used <= recorded_names()


# --- the dashboard -----------------------------------------------------------------------


def test_the_dashboard_panels_have_titles_descriptions_and_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "leadsync"
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")  # fmt: skip
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["title"], panel
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_rates_in_the_dashboard_use_grafanas_rate_interval() -> None:
    for query in panel_queries():
        for window in re.findall(r"\brate\([^\[]*\[([^\]]+)\]", query.expr):
            assert window == "$__rate_interval", (query.panel, query.expr)


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    used = " ".join(q.expr for q in panel_queries())
    for metric in (
        "leadsync_api_upserts_accepted_total", "leadsync_backlog_entries",
        "leadsync_oldest_entry_age_seconds", "leadsync_marketo_call_seconds_count",
        "leadsync_quota_used_today", "leadsync:config:daily_quota", "leadsync_leads_per_call",
        "leadsync_outcomes_total", 'status="DEAD_LETTERED"', "leadsync_pace_wait_seconds",
        "leadsync_cooldown_seconds", "leadsync_marketo_call_seconds_bucket",
        "leadsync_identity_calls_total", "leadsync_api_requests_total",
        "leadsync_api_request_seconds_bucket",
    ):  # fmt: skip
        assert metric in used, metric


# --- docker compose, profile "monitoring" ------------------------------------------------


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    found = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
            found[target] = (ROOT / source).resolve()
    return found


def test_prometheus_and_grafana_run_only_under_the_monitoring_profile() -> None:
    services = compose()["services"]
    for name in MONITORING_SERVICES:
        assert services[name]["profiles"] == ["monitoring"], name
    for name, spec in services.items():
        if "monitoring" in spec.get("profiles", []):
            assert name in MONITORING_SERVICES


def test_compose_prometheus_loads_alerts_yml_and_scrapes_the_jobs_the_rules_name() -> None:
    prometheus = compose()["services"]["prometheus"]
    files = mounts(prometheus)
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))  # fmt: skip
    config = load_yaml(files[config_path])
    assert [files[path] for path in config["rule_files"]] == [ALERTS.resolve()]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}  # fmt: skip
    worker_port = compose()["services"]["worker"]["expose"][0]
    assert worker_port == str(Settings.model_fields["metrics_port"].default)
    assert targets["leadsync-worker"] == [f"worker:{worker_port}"]
    api_command = compose()["services"]["api"]["command"]
    assert targets["leadsync-api"] == [f"api:{api_command[api_command.index('--port') + 1]}"]
    assert targets["redis"] == ["redis-exporter:9121"]
    assert (
        compose()["services"]["redis-exporter"]["environment"]["REDIS_ADDR"] == "redis://redis:6379"
    )
    used_jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert used_jobs <= set(targets)


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    files = mounts(grafana)
    provisioning = files["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "leadsync.yml")["providers"]
    folder = provider["options"]["path"]
    dashboards = {target: path for target, path in files.items() if target.startswith(folder + "/")}
    assert list(dashboards.values()) == [(MONITORING / "grafana" / "leadsync.json").resolve()]


@pytest.mark.parametrize("name", sorted(MONITORING_SERVICES - {"redis-exporter"}))
def test_monitoring_services_have_healthchecks(name: str) -> None:
    # redis_exporter's image has no shell or HTTP client to run one with.
    assert compose()["services"][name]["healthcheck"]["test"]
