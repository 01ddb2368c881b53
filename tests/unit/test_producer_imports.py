"""The producer library must stay light: web apps install it without the worker stack.

Every producers module is imported in a fresh interpreter, and nothing of the worker,
the simulator or the worker's dependencies may have been loaded by then.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import producers

FORBIDDEN = (
    "worker",
    "marketo_sim",
    "pydantic",
    "pydantic_settings",
    "celery",
    "kombu",
    "lxml",
    "aiohttp",
    "tenacity",
    "prometheus_client",
    "typer",
    "rich",
    "fakeredis",
)
ROOT = Path(__file__).resolve().parents[2]


def producer_modules() -> list[str]:
    return sorted(f"producers.{info.name}" for info in pkgutil.iter_modules(producers.__path__))


def test_the_producer_modules_are_found() -> None:
    assert {"producers.sync", "producers.aio", "producers.contract"} <= set(producer_modules())


def test_importing_every_producers_module_loads_nothing_of_the_worker_stack() -> None:
    modules = ["producers", *producer_modules()]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    assert json.loads(done.stdout) == []


def test_the_public_api_imports_from_the_package() -> None:
    from producers import (  # noqa: F401
        AsyncLeadProducer,
        InvalidLead,
        LeadProducer,
        LeadsyncError,
        LeadUpsert,
        Outcome,
        OutcomeStatus,
    )

    assert issubclass(InvalidLead, LeadsyncError)
