"""The monitoring files (deploy/monitoring/) read for tests: the alert rules, the
dashboard's PromQL, and the metric names both use."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "leadsync.json"
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "monitoring"
OPERATIONS_DOC = ROOT / "docs" / "operations-deploy.md"

#: Grafana's interval variables, with the values a range query would give them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
#: Series leadsync does not export: Prometheus's own per target, and redis_exporter's.
EXTERNAL_METRICS = frozenset({"up", "redis_memory_used_bytes", "redis_memory_max_bytes"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_DURATION = re.compile(r"\[[^\]]*\]")
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool", "inf", "nan"})  # fmt: skip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(ALERTS)["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str

    def promql(self) -> str:
        """The expression with Grafana's variables replaced, as Prometheus would get it."""
        text = self.expr
        for name, value in GRAFANA_VARIABLES.items():
            text = text.replace(name, value)
        return text


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in panels()
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords, label names
    or numbers): names left after strings, label matchers, groupings and ranges go, and
    not followed by "(". Good for the expressions in this repository, not any PromQL."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _DURATION.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        name = match.group()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if match.start() > 0 and (
            text[match.start() - 1].isdigit() or text[match.start() - 1] == "."
        ):
            continue  # the exponent or unit of a number
        names.add(name)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Every series name the rules and the dashboard use -> where."""
    used: dict[str, set[str]] = {}
    for group in rule_groups():
        for rule in group["rules"]:
            where = rule.get("alert") or rule["record"]
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(where)
    for query in panel_queries():
        for name in metric_names(query.promql()):
            used.setdefault(name, set()).add(f"panel {query.panel!r}")
    return used


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the operations guide's headings."""
    anchors = set()
    for line in OPERATIONS_DOC.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors
