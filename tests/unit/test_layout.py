"""The shape of the code: dependencies run one way. A forbidden import anywhere in a
module (at the top or inside a function) fails here, with the file and line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Units of the worker, lowest first: a unit imports only units of lower layers (and
#: itself). Celery sits at the top edge; the pure core and the families below it.
LAYERS: list[set[str]] = [
    {"worker.errors", "worker.faultpoints", "worker.lua"},
    {"worker.settings"},
    {"worker.connections", "worker.failover", "worker.broker"},
    {"worker.core", "worker.transport", "worker.ledger", "worker.limits"},
    {"worker.marketo", "worker.scheduling"},
    {"worker.obs"},
    {"worker.drain", "worker.ops"},
    {"worker.runtime"},
    {"worker.api"},
    {"worker.app", "worker.cli"},
    {"worker.tasks"},
]
LAYER_OF = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "worker" or len(parts) == 1 else f"worker.{parts[1]}"


def imports(package: str, root: Path = ROOT) -> Iterator[tuple[str, int, str]]:
    """(file, line, imported module) for every absolute import in ``package``."""
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield str(path.relative_to(root)), node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield str(path.relative_to(root)), node.lineno, node.module


def module_of(file: str) -> str:
    return ".".join(Path(file).with_suffix("").parts).removesuffix(".__init__")


def test_producers_import_nothing_of_the_worker_or_the_simulator() -> None:
    bad = [
        f"{file}:{line} imports {name}"
        for file, line, name in imports("producers")
        if name.split(".")[0] in ("worker", "marketo_sim")
    ]
    assert not bad, bad


def test_the_worker_never_imports_the_simulator() -> None:
    bad = [
        f"{file}:{line} imports {name}"
        for file, line, name in imports("worker")
        if name.split(".")[0] == "marketo_sim"
    ]
    assert not bad, bad


#: What the worker may import of ``producers``: the package (the producers and their
#: errors, as a web app uses them) and ``producers.contract`` (everything else the two
#: sides share); never a module behind them (``_core``, ``wire``, ``keys``, ...).
WORKER_MAY_IMPORT = frozenset({"producers", "producers.contract"})
#: Files still reaching behind the contract, each with the reason. worker/api/app.py was
#: being rewritten by the admission work when this rule came in (review A3).
BEHIND_THE_CONTRACT_ALLOWED: frozenset[str] = frozenset()


def test_the_worker_uses_producers_through_one_public_module() -> None:
    bad = [
        f"{file}:{line} imports {name}: use producers.contract (or producers)"
        for file, line, name in imports("worker")
        if name.split(".")[0] == "producers"
        and name not in WORKER_MAY_IMPORT
        and file not in BEHIND_THE_CONTRACT_ALLOWED
    ]
    assert not bad, bad


def test_worker_units_import_only_lower_layers() -> None:
    bad = []
    for file, line, name in imports("worker"):
        if not name.startswith("worker."):
            continue
        here, there = _unit(module_of(file)), _unit(name)
        if here == there:
            continue
        assert here in LAYER_OF, f"{here} is in no layer: add it to LAYERS"
        assert there in LAYER_OF, f"{there} is in no layer: add it to LAYERS"
        if LAYER_OF[there] >= LAYER_OF[here]:
            bad.append(f"{file}:{line} ({here}) imports {name} ({there}, not below it)")
    assert not bad, bad


def test_the_pure_core_does_no_io() -> None:
    heavy = {"redis", "aiohttp", "celery", "lxml", "prometheus_client"}
    bad = [
        f"{file}:{line} imports {name}"
        for file, line, name in imports("worker/core")
        if name.split(".")[0] in heavy
    ]
    assert not bad, bad


def test_the_guard_sees_a_lazy_import(tmp_path: Path) -> None:
    """An import inside a function is still a dependency: the scan finds it."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "m.py").write_text(
        "def f():\n    from marketo_sim.demo import run_demo\n", encoding="utf-8"
    )
    assert list(imports("worker", tmp_path)) == [("worker/m.py", 2, "marketo_sim.demo")]
