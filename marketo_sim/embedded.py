"""Embedded services for `leadsync demo`: a Redis when none is configured, and a Celery
worker (with the beat tick) as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, ValueError):
        return False


def _wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not redis_answers(url):
        if time.monotonic() > deadline:
            raise RuntimeError("embedded Redis did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def embedded_redis() -> Iterator[tuple[str, str]]:
    """Yield (url, kind): a private redis-server on a free port. The ledger's steps are
    Redis Lua (XAUTOCLAIM, cjson), which no emulation runs faithfully, so a real
    server is required (``scripts/ensure-redis`` installs one)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server not found: run scripts/ensure-redis (or `make demo`, which does), "
            "or set LEADSYNC_REDIS_URL to a Redis 7 server"
        )
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    workdir = tempfile.mkdtemp(prefix="leadsync-demo-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(url, 10)
        yield url, "redis-server"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def worker_command(
    *, concurrency: int, name: str, loglevel: str = "INFO", beat_schedule: Path | None = None
) -> list[str]:
    """``celery -A worker.app worker`` as leadsync runs it (with an embedded beat when a
    schedule file is given)."""
    args = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", loglevel,
        "-Q", "leadsync", "--without-gossip", "--without-mingle", "-n", f"{name}@%h",
    ]  # fmt: skip
    if beat_schedule is not None:
        args += ["-B", "--schedule", str(beat_schedule)]
    return args


def stop_group(process: subprocess.Popen[bytes], first: signal.Signals, wait_s: float = 30) -> None:
    """Signal the process group of ``process`` (started with ``start_new_session``) with
    ``first``; kill what is left after ``wait_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def celery_worker(
    env: Mapping[str, str], *, concurrency: int, beat: bool = True, log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A worker.app worker`` (with an embedded beat) in its own process group;
    stop it with SIGTERM (a soft shutdown) and kill what is left."""
    workdir = tempfile.mkdtemp(prefix="leadsync-worker-")
    args = worker_command(
        concurrency=concurrency,
        name=f"demo-{os.getpid()}",
        loglevel="WARNING",
        beat_schedule=Path(workdir) / "beat-schedule" if beat else None,
    )
    output = open(log_path or Path(workdir) / "worker.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop_group(process, signal.SIGTERM)
        output.close()
        shutil.rmtree(workdir, ignore_errors=True)
