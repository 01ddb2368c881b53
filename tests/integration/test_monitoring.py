"""The monitoring files run through promtool (installed by scripts/ensure-promtool), and
checked against what a live worker and a live API export on /metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from marketo_sim.config import SimConfig
from tests.integration.test_deploy_manifests import KUBERNETES_VERSION, kustomize
from tests.support.api_kit import running_api
from tests.support.monitoring import (
    ALERTS,
    ALERTS_TEST,
    EXTERNAL_METRICS,
    MONITORING,
    OVERLAY,
    panel_queries,
    recorded_names,
    used_metric_names,
)
from tests.support.pipeline import running_pipeline
from tests.support.redis_server import free_port
from tests.unit.test_monitoring_files import shipped_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed: run scripts/ensure-promtool (make test does)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_compose_prometheus_config(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]  # its path in the container
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_rules(exprs: list[str]) -> str:
    """The expressions as recording rules, for `promtool check rules` to parse."""
    rules = [{"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_every_dashboard_expression_parses(promtool: str, tmp_path: Path) -> None:
    queries = panel_queries()
    path = tmp_path / "dashboard.yml"
    path.write_text(dashboard_rules([q.promql() for q in queries]))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_dashboard_check_catches_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(dashboard_rules(["sum(rate(leadsync_outcomes_total[5m])"]))
    assert run(promtool, "check", "rules", str(path)).returncode != 0


# --- the thresholds follow the shipped settings -------------------------------------------


def threshold_case(flush_interval_s: float) -> dict[str, object]:
    """A promtool test: a ticking worker exports ``flush_interval_s``; shard 0's oldest
    entry waits just past 20 of them (or the 2-minute floor), shard 1's just under."""
    bar = max(20 * flush_interval_s, 120)
    worker = 'job="leadsync-worker", instance="w1"'
    return {
        "interval": "1m",
        "input_series": [
            {"series": f"leadsync_last_tick_timestamp_seconds{{{worker}}}", "values": "60+60x20"},
            {
                "series": f"leadsync_flush_interval_seconds{{{worker}}}",
                "values": f"{flush_interval_s:g}x20",
            },
            {
                "series": f'leadsync_oldest_entry_age_seconds{{{worker}, shard="0"}}',
                "values": f"{bar + 1:g}x20",
            },
            {
                "series": f'leadsync_oldest_entry_age_seconds{{{worker}, shard="1"}}',
                "values": f"{bar - 1:g}x20",
            },
        ],
        "promql_expr_test": [
            {
                "expr": "leadsync:config:flush_interval_seconds",
                "eval_time": "10m",
                "exp_samples": [
                    {"labels": "leadsync:config:flush_interval_seconds", "value": flush_interval_s}
                ],
            },
            {
                "expr": 'ALERTS{alertname="LeadsyncOldestEntryTooOld", alertstate="firing"}',
                "eval_time": "10m",
                "exp_samples": [
                    {
                        "labels": 'ALERTS{alertname="LeadsyncOldestEntryTooOld", alertstate="firing", severity="warning", shard="0"}',
                        "value": 1,
                    }
                ],
            },
        ],
    }


@pytest.mark.parametrize("where", ["k8s", "env.example"])
def test_the_oldest_entry_threshold_follows_the_shipped_flush_interval(
    promtool: str, tmp_path: Path, where: str
) -> None:
    """deploy/k8s and deploy/env.example ship LEADSYNC_FLUSH_INTERVAL_S=2, not the default
    30: the worker exports what it runs with, and the alert fires at 20 x that (at least
    2 minutes)."""
    settings = shipped_settings()[where]
    tests = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [threshold_case(settings.flush_interval_s)]}  # fmt: skip
    (tmp_path / "shipped_test.yml").write_text(yaml.safe_dump(tests))
    result = run(promtool, "test", "rules", str(tmp_path / "shipped_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# --- every metric used is exported ---------------------------------------------------------


def sample_names(exposition: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text: str = reply.read().decode()
        return text


def used_by_process() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The leadsync series the rules and panels use: (the worker's, the API's)."""
    used = used_metric_names()
    leadsync = {
        name: where
        for name, where in used.items()
        if name not in EXTERNAL_METRICS and name not in recorded_names()
    }
    assert set(used) - set(leadsync) <= EXTERNAL_METRICS | recorded_names()
    api = {n: w for n, w in leadsync.items() if n.startswith("leadsync_api_")}
    worker = {n: w for n, w in leadsync.items() if n not in api}
    return worker, api


@pytest.fixture
def worker_exposition(redis_url: str) -> Iterator[str]:
    """A real worker (Celery prefork, beat tick) syncing leads against a simulator that
    faults now and then, so the labelled series (outcomes, faults, shards) exist."""
    port = free_port()
    sim = SimConfig(fault_internal_10001_rate=0.5, seed=7)
    with running_pipeline(redis_url, shards=4, sim_config=sim) as pipe:
        pipe.start_worker(concurrency=2, extra_env={"LEADSYNC_METRICS_PORT": str(port)})
        for wave in range(6):  # calls of their own, so that some fault
            ids = [pipe.producer.upsert(email=f"m{wave}-{i}@example.com") for i in range(5)]
            outcomes = pipe.wait_all(ids, timeout_s=60)
            assert all(outcomes.values()), pipe.logs()[-3000:]
        wanted = set(used_by_process()[0])
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                text = ""
            if wanted <= sample_names(text):
                break
            time.sleep(0.5)
        yield text


def test_a_live_worker_exports_every_worker_series_the_rules_and_panels_use(
    worker_exposition: str,
) -> None:
    worker, _ = used_by_process()
    missing = {name: sorted(where) for name, where in worker.items() if name not in sample_names(worker_exposition)}  # fmt: skip
    assert not missing, f"used but not exported by a worker: {missing}"
    assert 'leadsync_marketo_faults_total{code="10001"}' in worker_exposition


async def test_a_live_api_exports_every_api_series_the_rules_and_panels_use(
    redis_url: str,
) -> None:
    _, api_used = used_by_process()
    async with running_api(redis_url) as api:
        key = await api.key("metrics", "write")
        answer = await api.call("POST", "/v1/leads", key=key, json_body={"email": "api@example.com"})  # fmt: skip
        assert answer.status == 202, answer.body
        metrics = await api.call("GET", "/metrics")
        assert metrics.status == 200
        exposition = metrics.body
    assert isinstance(exposition, str)
    missing = {name: sorted(where) for name, where in api_used.items() if name not in sample_names(exposition)}  # fmt: skip
    assert not missing, f"used but not exported by the API: {missing}"


def test_kustomize_renders_the_monitoring_overlay_in_the_leadsync_namespace() -> None:
    docs = kustomize(OVERLAY)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "leadsync", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "leadsync"
        if doc["apiVersion"] not in {"keda.sh/v1alpha1", "monitoring.coreos.com/v1"}:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert {
        ("PodMonitor", "leadsync-worker"), ("ServiceMonitor", "leadsync-api"),
        ("PodMonitor", "redis"), ("PrometheusRule", "leadsync"),
        ("ConfigMap", "leadsync-dashboard"), ("Deployment", "leadsync-worker"),
    } <= kinds  # fmt: skip


def test_ha_with_monitoring_scrapes_an_exporter_beside_every_redis_pod(tmp_path: Path) -> None:
    """The layout the docs describe: an overlay on overlays/ha adding the monitoring
    overlay's files. Every Redis pod carries redis_exporter, the merged StatefulSet is a
    valid Kubernetes object, and the PodMonitor "redis" selects those pods' port."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    monitoring = [
        os.path.relpath(OVERLAY / name, tmp_path)  # kustomize wants relative paths
        for name in yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["resources"]
        if name.endswith(".yaml")
    ]
    combined = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY.parent / "ha", tmp_path), *monitoring],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(combined))
    rendered = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    redis = docs[("StatefulSet", "redis")]
    kubernetes_validate.validate(redis, KUBERNETES_VERSION, strict=True)
    pod = redis["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"redis", "redis-exporter"}
    assert containers["redis"]["command"] == ["sh", "/scripts/start-redis.sh"]  # kept whole
    monitor = docs[("PodMonitor", "redis")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {port["name"] for port in containers["redis-exporter"]["ports"]}
    assert endpoint["port"] in ports
    secret = docs[("Secret", "leadsync-secrets")]["stringData"]
    for item in containers["redis-exporter"]["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secret, ref["key"]
