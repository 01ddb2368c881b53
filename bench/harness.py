"""Shared machinery of the benchmarks: the machine, the simulator as a subprocess,
Celery workers as process groups, CPU accounting, and bench/RESULTS.md sections."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from marketo_sim.config import SimConfig
from marketo_sim.embedded import free_port
from marketo_sim.runner import AdminClient

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
WORKDIR = Path(__file__).resolve().parent / ".work"
USER_ID = "bench_user"
ENCRYPTION_KEY = "bench-key"  # the simulator's, not a secret
_SIM_DEFAULTS = SimConfig()


# --- the machine and the results file ----------------------------------------------


def machine_line(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"nproc {os.cpu_count()} ({cpu}), Python {platform.python_version()}, "
        f"redis-server {redis_version}, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    )


def code_version() -> str:
    """HEAD, and whether leadsync's code differs from it (other people edit this tree)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "worker", "producers", "marketo_sim"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (+ uncommitted changes in worker/producers/marketo_sim)" if dirty else head


def command_line() -> str:
    return "python -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, machine: str, body: str) -> None:
    """Replace (or append) the generated section ``name`` of bench/RESULTS.md."""
    begin, end = f"<!-- BEGIN {name} (generated) -->", f"<!-- END {name} -->"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{begin}\n## {title}\n\n- date: {stamp}\n- code: {code_version()}\n- machine: {machine}\n"
        f"- command: `{command_line()}`\n\n{body.strip()}\n{end}"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


# --- CPU accounting ----------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process and all its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def redis_info_number(redis_url: str, section: str, name: str) -> int:
    """One number of ``INFO section`` (process_id, total_commands_processed, ...)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info(section)[name])
    finally:
        client.close()


def redis_pid(redis_url: str) -> int:
    return redis_info_number(redis_url, "server", "process_id")


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


# --- the simulator in its own process -------------------------------------------------------


class SimProcess:
    """``python -m marketo_sim`` on a free port, so its CPU is apart from the bench's."""

    def __init__(self, **fields: Any) -> None:
        self.fields = {"user_id": USER_ID, "encryption_key": ENCRYPTION_KEY, **fields}
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/soap/mktows/2_2"

    @property
    def client_id(self) -> str:
        """The REST client id the simulator accepts (its ``client_id`` field)."""
        return str(self.fields.get("client_id", _SIM_DEFAULTS.client_id))

    @property
    def client_secret(self) -> str:
        """The REST client secret the simulator accepts (its ``client_secret`` field)."""
        return str(self.fields.get("client_secret", _SIM_DEFAULTS.client_secret))

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.base_url, timeout_s=120)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def configure(self, **fields: Any) -> None:
        self.admin.configure(**fields)

    def __enter__(self) -> SimProcess:
        args = [sys.executable, "-m", "marketo_sim", "--port", str(self.port)]
        for name, value in self.fields.items():
            args += ["--set", f"{name}={json.dumps(value)}"]
        WORKDIR.mkdir(exist_ok=True)
        log = open(WORKDIR / "sim.log", "ab")
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def answers() -> bool:
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.admin.summary()
                return True
            return False

        if not wait_until(answers, 20, 0.1):
            raise RuntimeError("the simulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- Celery workers ------------------------------------------------------------------------


@dataclass
class Worker:
    """A ``celery worker`` in its own process group."""

    app_module: str
    queues: str
    concurrency: int
    env: Mapping[str, str]
    name: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        return f"{self.name}@{platform.node()}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Worker:
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app_module,
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(self.concurrency),
            "--loglevel",
            "WARNING",
            "-Q",
            self.queues,
            "--without-gossip",
            "--without-mingle",
            "-n",
            self.nodename,
            *self.extra_args,
        ]
        WORKDIR.mkdir(exist_ok=True)
        log = open(WORKDIR / f"{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Ready once every pool process exists and has settled (CPU no longer climbing)."""

        def pool_up() -> bool:
            self.check_alive()
            with contextlib.suppress(psutil.NoSuchProcess):
                return len(psutil.Process(self.pid).children()) >= self.concurrency
            return False

        if not wait_until(pool_up, timeout_s, 0.1):
            raise RuntimeError(f"worker {self.name} did not start its pool")
        last = -1.0
        while True:  # imports and connections done: CPU stops moving
            time.sleep(0.5)
            now = tree_cpu_s(self.pid)
            if now - last < 0.02:
                return
            last = now

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited; see {WORKDIR / self.name}.log")

    def cpu_s(self) -> float:
        return tree_cpu_s(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 30) -> None:
        if self.process is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.process.wait()
        self.kill(signal.SIGKILL)  # reap what is left of the group


@contextlib.contextmanager
def running(workers: Sequence[Worker]) -> Iterator[Sequence[Worker]]:
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def scratch_dir(prefix: str) -> Path:
    WORKDIR.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=WORKDIR))
