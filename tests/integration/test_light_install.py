"""`pip install leadsync` (no extras) in an empty venv gives a web app the producers and
redis, none of the worker stack, and the README's web-app example runs there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producers.contract import Keys, Outcome, OutcomeStatus, request_id

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
#: What the distribution is built from (a copy, so the build leaves the tree alone).
SOURCES = ("pyproject.toml", "README.md", "producers", "worker", "marketo_sim")
#: Distributions the light form must not bring.
WORKER_STACK = (
    "celery",
    "kombu",
    "lxml",
    "aiohttp",
    "pydantic",
    "pydantic-settings",
    "tenacity",
    "prometheus-client",
    "typer",
    "rich",
    "flower",
    "fakeredis",
)
LEAD_ID = 4242


def readme_web_app_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it from a web app", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README lost its web-app example"
    return match.group(1)


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding `pip install leadsync` (no extras), built from this tree."""
    base = tmp_path_factory.mktemp("light")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv.create(base / "venv", with_pip=True)
    python = base / "venv" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source],
        check=True,
        timeout=150,
        env=clean_env(),
    )
    return python


def clean_env() -> dict[str, str]:
    """This environment without the dev venv and without leadsync settings."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LEADSYNC_", "PYTHON", "VIRTUAL_ENV"))
    }


def test_the_light_install_holds_redis_and_none_of_the_worker_stack(light_python: Path) -> None:
    code = (
        "import importlib.metadata as m, importlib.util as u, json\n"
        "names = sorted(d.metadata['Name'].lower() for d in m.distributions())\n"
        "modules = ['celery', 'kombu', 'lxml', 'aiohttp', 'pydantic', 'pydantic_settings']\n"
        "print(json.dumps({'names': names, 'importable': [n for n in modules if u.find_spec(n)]}))\n"
    )
    done = subprocess.run(
        [light_python, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=clean_env(),
        cwd=light_python.parent,
    )
    found = json.loads(done.stdout)
    assert found["importable"] == []
    assert not set(WORKER_STACK) & set(found["names"])
    assert {"leadsync", "redis", "hiredis"} <= set(found["names"])


@pytest.fixture
def stand_in_worker(redis_url: str) -> Iterator[None]:
    """Commits CREATED for whatever is enqueued, as the worker would (outcome, then the
    entry gone, in one transaction), until the test ends."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            stored = client.hget(keys.config(), "shards")
            for shard in range(int(stored) if stored else 0):
                for entry_id, _ in client.xrange(keys.stream(shard)):
                    entry = entry_id.decode()
                    outcome = Outcome(
                        request_id(shard, entry), OutcomeStatus.CREATED, lead_id=LEAD_ID
                    )
                    pipe = client.pipeline(transaction=True)
                    pipe.hset(keys.outcome(shard, entry), mapping=outcome.to_fields())
                    pipe.xdel(keys.stream(shard), entry)
                    pipe.execute()
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=5)
    client.close()


@pytest.mark.usefixtures("stand_in_worker")
def test_the_readme_web_app_example_runs_in_the_light_install(
    light_python: Path, redis_url: str
) -> None:
    example = readme_web_app_example().replace("redis://redis:6379/0", redis_url)
    script = (
        "import sys\n"
        + example
        + "import producers\n"
        + "assert 'worker' not in sys.modules and 'pydantic' not in sys.modules, sorted(sys.modules)\n"
        + "print('from', producers.__file__)\n"
    )
    done = subprocess.run(
        [light_python, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=light_python.parent,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"CREATED {LEAD_ID} None"
    assert lines[1].startswith(f"from {light_python.parent.parent}")
    assert sys.prefix not in lines[1]
