"""The producer library must stay light: web apps install it without the worker stack."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("celery", "lxml", "aiohttp", "kombu")


def test_importing_producers_pulls_in_no_celery_lxml_aiohttp_or_kombu() -> None:
    code = (
        "import json, sys\n"
        "import producers, producers.producer\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == []
