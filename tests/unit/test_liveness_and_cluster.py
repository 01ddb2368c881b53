"""Pods ride out a Redis outage (liveness reads a local heartbeat file, never Redis), and
``leadsync doctor`` says plainly that Redis Cluster is not supported."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ResponseError
from typer.testing import CliRunner

from producers.contract import Keys
from tests.support.redis_server import free_port
from worker.cli import app as cli
from worker.ops.doctor import CLUSTER_UNSUPPORTED, _guarded, check_not_cluster
from worker.ops.health import (
    LOCAL_HEARTBEAT_EVERY_S,
    LocalHeartbeat,
    local_heartbeat_path,
    local_liveness,
)


class Clock:
    def __init__(self, now_s: float = 1_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def read(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(path.read_text())
    return body


# --- the local heartbeat ------------------------------------------------------------------


def test_a_running_main_loop_is_alive_while_its_beat_is_fresh(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "beat"
    LocalHeartbeat(path, clock=clock).connected()
    assert read(path)["state"] == "running"
    assert local_liveness(path, max_age_s=60, now_s=clock.now_s + 59)[0] == "OK"
    level, detail = local_liveness(path, max_age_s=60, now_s=clock.now_s + 61)
    assert level == "FAIL"
    assert "main loop last beat 61 s ago" in detail


def test_waiting_for_the_broker_stays_alive_however_long_redis_is_away(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "beat"
    beat = LocalHeartbeat(path, clock=clock)
    beat.connected()
    clock.now_s += 3
    beat.disconnected()  # the consumer lost its broker connection
    clock.now_s += 1
    beat.beat()  # Celery's "worker-offline" heartbeat while it shuts the connection down
    assert read(path)["state"] == "waiting"
    level, detail = local_liveness(path, max_age_s=60, now_s=clock.now_s + 3599)
    assert level == "OK"
    assert "waiting for the broker for 3600 s" in detail
    clock.now_s += 7200
    beat.connected()  # reconnected: the loop beats again
    assert read(path)["since"] == clock.now_s
    assert local_liveness(path, max_age_s=60, now_s=clock.now_s + 1)[0] == "OK"


def test_the_file_is_rewritten_at_most_every_few_seconds_while_running(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "beat"
    beat = LocalHeartbeat(path, clock=clock)
    beat.beat()
    assert not path.exists(), "no beat before the broker connection is up"
    beat.connected()
    first = read(path)["at"]
    clock.now_s += LOCAL_HEARTBEAT_EVERY_S / 2
    beat.beat()
    assert read(path)["at"] == first
    clock.now_s += LOCAL_HEARTBEAT_EVERY_S
    beat.beat()
    assert read(path)["at"] == clock.now_s


def test_no_file_a_broken_one_or_a_dead_writer_is_not_alive(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    assert local_liveness(path)[0] == "FAIL"
    path.write_text("{not json")
    assert local_liveness(path)[0] == "FAIL"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)  # fmt: skip
    path.write_text(json.dumps({"state": "waiting", "at": 1, "since": 1, "pid": int(dead.stdout)}))
    level, detail = local_liveness(path)
    assert level == "FAIL"
    assert "is gone" in detail


def test_a_heartbeat_that_cannot_be_written_never_raises(tmp_path: Path) -> None:
    LocalHeartbeat(tmp_path / "missing-dir" / "beat").connected()


def test_the_path_is_per_key_prefix_in_the_temp_directory(tmp_path: Path) -> None:
    assert local_heartbeat_path("a:b", str(tmp_path)) == tmp_path / "leadsync-worker-a_b.heartbeat"
    assert local_heartbeat_path("x") != local_heartbeat_path("y")


def test_the_celery_consumer_step_marks_running_and_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import app as celery_app

    beat = LocalHeartbeat(tmp_path / "beat")
    monkeypatch.setattr(celery_app, "_local_heartbeat", beat)
    step = celery_app.BrokerLiveness(parent=None)
    step.start(None)
    assert read(beat.path)["state"] == "running"
    step.stop(None)
    assert read(beat.path)["state"] == "waiting"
    assert celery_app.BrokerLiveness in celery_app.app.steps["consumer"]


# --- the probes through the CLI -------------------------------------------------------------


def probe_env(prefix: str) -> dict[str, str]:
    # Nothing listens there: Redis is down.
    return {
        "LEADSYNC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LEADSYNC_KEY_PREFIX": prefix,
        "LEADSYNC_REDIS_CONNECT_TIMEOUT_S": "0.5",
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": "k",
    }


def test_liveness_is_ok_with_redis_down_while_the_local_heartbeat_is_fresh() -> None:
    prefix = f"lv{uuid.uuid4().hex[:8]}"
    path = local_heartbeat_path(prefix)
    try:
        LocalHeartbeat(path).connected()
        result = CliRunner().invoke(cli, ["doctor", "--liveness"], env=probe_env(prefix))
        assert result.exit_code == 0, result.output
        assert result.output.startswith("OK ")
        # Readiness is where Redis counts.
        ready = CliRunner().invoke(cli, ["doctor", "--readiness"], env=probe_env(prefix))
        assert ready.exit_code == 1
        assert ready.output.startswith("FAIL cannot reach 127.0.0.1:")
        # A stale beat from a running loop does fail it.
        body = read(path)
        path.write_text(json.dumps({**body, "at": body["at"] - 120}))
        stale = CliRunner().invoke(cli, ["doctor", "--liveness"], env=probe_env(prefix))
        assert stale.exit_code == 1
    finally:
        path.unlink(missing_ok=True)


def test_liveness_of_a_worker_waiting_for_redis_is_ok_in_a_fresh_process() -> None:
    """As the Kubernetes probe runs it: a new process, Redis down, a long outage."""
    prefix = f"lv{uuid.uuid4().hex[:8]}"
    path = local_heartbeat_path(prefix)
    try:
        clock = Clock(1_000.0)
        LocalHeartbeat(path, clock=clock).disconnected()  # written by this (living) process
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "doctor", "--liveness", "--max-age-s", "5"],
            env={**os.environ, **probe_env(prefix)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "waiting for the broker" in done.stdout
    finally:
        path.unlink(missing_ok=True)


# --- Redis Cluster is refused, with the reason ----------------------------------------------


class Stub:
    """A Redis client whose INFO and EXISTS answer as told."""

    def __init__(self, info: object = None, exists: object = 0) -> None:
        self._info, self._exists = info, exists

    async def info(self, section: str) -> object:
        assert section == "cluster"
        if isinstance(self._info, BaseException):
            raise self._info
        return self._info

    async def exists(self, *keys: str) -> object:
        if isinstance(self._exists, BaseException):
            raise self._exists
        return self._exists


@pytest.mark.parametrize(
    "stub",
    [
        Stub(info={"cluster_enabled": 1}),
        Stub(info=ResponseError("MOVED 3999 127.0.0.1:6381")),
        Stub(info=ResponseError("NOPERM this user has no permissions to run 'info'"),
             exists=ResponseError("CROSSSLOT Keys in request don't hash to the same slot")),
    ],
    ids=["cluster_enabled", "moved", "crossslot"],
)  # fmt: skip
def test_doctor_fails_a_cluster_endpoint_and_says_why(stub: Stub) -> None:
    check = asyncio.run(check_not_cluster(stub, Keys()))  # type: ignore[arg-type]
    assert check.level == "FAIL"
    assert "Redis Cluster is not supported" in check.detail
    assert "Celery" in check.detail
    assert "several shards" in check.detail
    assert "Sentinel" in check.detail


def test_doctor_passes_one_redis() -> None:
    ok = asyncio.run(check_not_cluster(Stub(info={"cluster_enabled": 0}), Keys()))  # type: ignore[arg-type]
    assert ok.level == "OK"
    fake = fakeredis.FakeAsyncRedis()
    assert asyncio.run(check_not_cluster(fake, Keys())).level in ("OK", "WARN")
    unsure = Stub(info=ResponseError("NOPERM info"), exists=ResponseError("NOPERM exists"))
    assert asyncio.run(check_not_cluster(unsure, Keys())).level == "WARN"  # type: ignore[arg-type]


def test_a_moved_reply_in_any_check_is_reported_as_a_cluster() -> None:
    async def redirected() -> Any:
        raise ResponseError("MOVED 12539 10.0.0.7:6379")

    check = asyncio.run(_guarded("consumer groups", redirected()))
    assert check.level == "FAIL"
    assert check.detail == CLUSTER_UNSUPPORTED
