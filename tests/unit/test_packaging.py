"""The distribution's shape: a light base (producers + redis), the worker as an extra, and
one lock file that pins every extra and that the Dockerfile's uv agrees with."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("worker", "producers", "marketo_sim")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def name_of(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group().lower().replace("_", "-")


def locked(name: str) -> dict[str, Any]:
    return next(p for p in lock()["package"] if p["name"] == name)


def test_a_plain_install_brings_redis_and_nothing_else() -> None:
    assert [name_of(r) for r in pyproject()["project"]["dependencies"]] == ["redis"]


def test_the_worker_stack_is_the_worker_extra() -> None:
    worker = {name_of(r) for r in pyproject()["project"]["optional-dependencies"]["worker"]}
    assert {"celery", "aiohttp", "lxml", "tenacity", "pydantic-settings", "flower"} <= worker
    assert "fakeredis" not in worker


def test_the_lock_holds_the_project_with_every_extra() -> None:
    project = locked("leadsync")
    extras = pyproject()["project"]["optional-dependencies"]
    assert set(project["optional-dependencies"]) == set(extras)
    assert [d["name"] for d in project["dependencies"]] == ["redis"]


def test_the_dockerfile_bootstraps_the_uv_the_lock_pins() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    match = re.search(r"^ARG UV_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert match, "the Dockerfile no longer pins uv"
    assert match.group(1) == locked("uv")["version"]


def test_no_runtime_module_imports_fakeredis() -> None:
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                assert not any(n.split(".")[0] == "fakeredis" for n in names), path
