"""Pods ride out a Redis outage: a real Celery worker's local heartbeat says ``running``
while it has its broker connection, ``waiting`` once Redis is gone (liveness stays OK
however long that lasts, so Kubernetes does not restart it), and ``running`` again when
Redis is back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pipeline import running_pipeline, wait_for
from tests.support.redis_server import RedisServer
from worker.ops.health import local_heartbeat_path, local_liveness

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def state(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["state"])
    except (OSError, ValueError, KeyError):
        return None


def probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``leadsync doctor --liveness`` as the Kubernetes probe runs it (a 20 s limit: the
    main loop beats every 2 s, but a loaded 2-core machine can delay a beat past 5 s)."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "doctor", "--liveness", "--max-age-s", "20"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_liveness_stays_ok_through_a_redis_outage_and_the_worker_resumes(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        with running_pipeline(server.url, shards=2) as pipe:
            env = {**pipe.env, "TMPDIR": str(tmp_path)}  # the pod's own /tmp
            pipe.start_worker(concurrency=1, extra_env={"TMPDIR": str(tmp_path)})
            path = local_heartbeat_path("leadsync", str(tmp_path))
            assert wait_for(lambda: state(path) == "running", 60), pipe.logs()
            assert probe(env).returncode == 0

            server.kill()  # Redis is gone: the consumer loses its broker connection
            assert wait_for(lambda: state(path) == "waiting", 20), pipe.logs()
            # However long the outage lasts, the worker is not declared dead.
            level, detail = local_liveness(path, max_age_s=5, now_s=time.time() + 3600)
            assert level == "OK", detail
            answer = probe(env)
            assert answer.returncode == 0, answer.stdout + answer.stderr
            assert "waiting for the broker" in answer.stdout

            server = RedisServer(port=server.port).start()  # Redis is back, same address
            assert wait_for(lambda: state(path) == "running", 45), pipe.logs()
            assert probe(env).returncode == 0
    finally:
        server.cleanup()
