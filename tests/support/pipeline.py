"""A running pipeline for integration tests: the simulator over HTTP, real Celery worker
subprocesses (with the beat tick) and a producer, all on one private Redis."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from marketo_sim.config import SimConfig
from marketo_sim.embedded import worker_command
from marketo_sim.runner import SimulatorThread
from producers.contract import Outcome
from producers.producer import LeadProducer

#: Small leases, timeouts and pauses, so that recovery from a fault takes seconds.
FAST_RECOVERY_ENV: Mapping[str, str] = {
    "LEADSYNC_LEASE_TTL_S": "8",
    "LEADSYNC_REDIS_SOCKET_TIMEOUT_S": "1",
    "LEADSYNC_REQUEST_TIMEOUT_S": "3",
    # A call whose outcome is unknown (a hang past the timeout, a 502 page, a cut reply)
    # rests its shards this long: the simulator is done with it by then.
    "LEADSYNC_UNKNOWN_OUTCOME_REST_S": "3",
    "LEADSYNC_CONNECT_TIMEOUT_S": "2",
    "LEADSYNC_FLUSH_INTERVAL_S": "0.2",
    "LEADSYNC_BACKOFF_INITIAL_S": "0.1",
    "LEADSYNC_BACKOFF_MAX_S": "1",
    "LEADSYNC_THROTTLE_COOLDOWN_S": "1",
    "LEADSYNC_HOLD_PROBE_INTERVAL_S": "1",
}

USER_ID = "pipeline_test_user"
ENCRYPTION_KEY = "pipeline-test-key"
CLIENT_ID = "pipeline-test-client"
CLIENT_SECRET = "pipeline-test-secret"


@dataclass
class Pipeline:
    """Handles to every moving part; start workers with :meth:`start_worker`."""

    redis_url: str
    sim: SimulatorThread
    env: dict[str, str]
    producer: LeadProducer
    workdir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(
        self,
        *,
        concurrency: int = 2,
        beat: bool = True,
        extra_env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """A real `celery -A worker.app worker` in its own process group."""
        name = name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        args = worker_command(
            concurrency=concurrency,
            name=name,
            beat_schedule=self.workdir / f"beat-{name}" if beat else None,
        )
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            args,
            env={**os.environ, **self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.workers.append(process)
        return process

    def stop_worker(
        self,
        process: subprocess.Popen[bytes],
        sig: int = signal.SIGTERM,
        timeout_s: float = 40,
        *,
        main_only: bool = False,
    ) -> None:
        """Signal the worker's process group, or (``main_only``, as Kubernetes does) only
        its main process, which then stops its pool the way Celery means to."""
        with contextlib.suppress(ProcessLookupError):
            if main_only:
                os.kill(process.pid, sig)
            else:
                os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Children of a killed main process die with it (PR_SET_PDEATHSIG), but reap the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def wait_all(self, request_ids: Sequence[str], timeout_s: float) -> dict[str, Outcome | None]:
        """Poll until every request has a final outcome or the time is up."""
        deadline = time.monotonic() + timeout_s
        final: dict[str, Outcome | None] = {}
        waiting = list(request_ids)
        while waiting and time.monotonic() < deadline:
            still = []
            for start in range(0, len(waiting), 2000):
                part = waiting[start : start + 2000]
                try:
                    found = self.producer.outcomes(part)
                except (redis.ConnectionError, redis.TimeoutError):
                    # A Redis that fails over drops its clients; the app asks again (the
                    # producer's client does not retry on its own: leadsync's loops do).
                    still.extend(part)
                    continue
                for rid, outcome in zip(part, found, strict=True):
                    if outcome is not None and outcome.status.is_final:
                        final[rid] = outcome
                    else:
                        still.append(rid)
            waiting = still
            if waiting:
                time.sleep(0.2)
        for rid in waiting:
            final[rid] = None
        return final


@contextlib.contextmanager
def running_pipeline(
    redis_url: str,
    *,
    sim_config: SimConfig | None = None,
    settings_env: Mapping[str, str] | None = None,
    shards: int = 8,
    api: str = "soap",
) -> Iterator[Pipeline]:
    """Simulator + producer + environment for workers; workers are started by the test.
    ``api`` is the Marketo API the workers call (the simulator speaks both)."""
    config = sim_config or SimConfig()
    config = dataclasses.replace(
        config,
        user_id=USER_ID,
        encryption_key=ENCRYPTION_KEY,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    workdir = Path(tempfile.mkdtemp(prefix="leadsync-it-"))
    with SimulatorThread(config) as sim:
        env = {
            "LEADSYNC_REDIS_URL": redis_url,
            "LEADSYNC_SHARDS": str(shards),
            "LEADSYNC_MARKETO_ENDPOINT": sim.endpoint,
            "LEADSYNC_MARKETO_USER_ID": USER_ID,
            "LEADSYNC_MARKETO_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "LEADSYNC_FLUSH_INTERVAL_S": "0.3",
            "LEADSYNC_METRICS_PORT": "0",
            "LEADSYNC_RATE_LIMIT_CALLS": "1000",
            "LEADSYNC_MAX_CONCURRENT_CALLS": "10",
            "LEADSYNC_MARKETO_API": api,
            "LEADSYNC_MARKETO_REST_URL": sim.rest_base_url,
            "LEADSYNC_MARKETO_CLIENT_ID": CLIENT_ID,
            "LEADSYNC_MARKETO_CLIENT_SECRET": CLIENT_SECRET,
            # No describe call in the simulator's log unless a test asks for the learned
            # fields (tests/integration/test_fields_learned.py does).
            "LEADSYNC_FIELDS_REFRESH_S": "0",
            **(settings_env or {}),
        }
        producer = LeadProducer.from_url(redis_url, shards=int(env["LEADSYNC_SHARDS"]))
        pipeline = Pipeline(redis_url, sim, env, producer, workdir)
        try:
            yield pipeline
        finally:
            for process in pipeline.workers:
                pipeline.stop_worker(process, timeout_s=30)
            producer.close()


def wait_for(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``condition`` until it is truthy (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True
