"""A whole pipeline on a Sentinel set, written to without a pause while its master fails.

Real processes: master, replica and three sentinels (``tests.support.sentinel_set``), a
Celery worker with its beat, ``leadsync api``, and the simulator over HTTP. Two writers
run in threads during the fault, each retrying a write until it is acknowledged (as an
app does) before writing the person's next value: a producer with
``LEADSYNC_ENQUEUE_REPLICAS=1`` and the HTTP API. Used by the failover test (short) and
``bench failover`` (longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from marketo_sim.config import SimConfig
from producers import LeadProducer, LeadsyncError
from producers.connect import redis_client
from producers.contract import Keys
from tests.support.invariants import Verdict, WriteLog, check_pipeline
from tests.support.pipeline import FAST_RECOVERY_ENV, Pipeline, running_pipeline
from tests.support.redis_server import free_port
from tests.support.sentinel_set import SentinelSet, sentinel_set
from worker.api.auth import KeyStore
from worker.connections import redis_client as worker_redis_client
from worker.settings import Settings

LEADSYNC = str(Path(sys.executable).with_name("leadsync"))
#: Marketo's window, scaled down so a run sees several: the simulator enforces it.
RATE_CALLS = 20
RATE_WINDOW_S = 2.0
SHARDS = 4


@dataclass
class Writer:
    """One writer thread: its acknowledged writes and when each was acknowledged."""

    name: str
    log: WriteLog = field(default_factory=WriteLog)
    acked_at: list[float] = field(default_factory=list)
    #: Per key, the values tried since its last acknowledged write: a write refused as
    #: NotReplicated (or cut off by the fault) may still be applied.
    in_doubt: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)

    def refused(self, what: str) -> None:
        self.refusals[what] = self.refusals.get(what, 0) + 1

    def first_ack_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first write acknowledged after it (one answered
        in the instant of the fault does not count)."""
        return next((t - moment for t in self.acked_at if t > moment + 0.2), None)


@dataclass
class FailoverReport:
    fault: str
    acknowledged: int
    verdict: Verdict
    summary: dict[str, Any]
    intake_resumed_s: dict[str, float | None]
    delivery_resumed_s: float | None
    refusals: dict[str, dict[str, int]]
    enqueue_ms: dict[str, list[float]]
    #: The end of the worker's log, to tell what happened when a promise broke.
    log_tail: str = ""
    #: Worker processes that exited during the run and were started again (as their
    #: pod's restartPolicy would): not a broken promise, but worth a look in the log.
    worker_restarts: int = 0

    def brief(self) -> str:
        """The figures without the timings or the log (an assertion message)."""
        return (
            f"{self.fault}: acknowledged={self.acknowledged} intake_resumed_s="
            f"{self.intake_resumed_s} delivery_resumed_s={self.delivery_resumed_s} "
            f"refusals={self.refusals} calls={self.summary['calls']} "
            f"worker_restarts={self.worker_restarts} "
            f"problems={self.problems()}"
        )

    def problems(self) -> list[str]:
        found = self.verdict.problems()
        if self.summary["max_calls_in_window"] > RATE_CALLS:
            found.append(f"{self.summary['max_calls_in_window']} calls in one rate window")
        limit_faults = {
            code: n
            for code, n in self.summary["faults_by_code"].items()
            if code in ("606", "607", "615", "20023", "20024")
        }
        if limit_faults:
            found.append(f"Marketo's limits were broken: {limit_faults}")
        return found


def _ack_loop(
    writer: Writer,
    stop: threading.Event,
    people: int,
    write: Callable[[dict[str, Any]], str],
    timings: list[float],
    pause_s: float,
) -> None:
    n = 0
    while not stop.is_set():
        record = {
            "email": f"{writer.name}-person{n % people}@example.com",
            "attributes": {"Company": f"{writer.name} write {n}"},
        }
        key = f"email:{record['email']}"
        while not stop.is_set():  # the same write until it is acknowledged
            writer.in_doubt.setdefault(key, []).append(record["attributes"])
            started = time.perf_counter()
            try:
                rid = write(record)
            except (LeadsyncError, redis.RedisError, OSError) as exc:
                writer.refused(type(exc).__name__)
                time.sleep(0.05)
                continue
            timings.append((time.perf_counter() - started) * 1000)
            writer.log.acknowledged(rid, record)
            writer.in_doubt.pop(key, None)
            writer.acked_at.append(time.time())
            n += 1
            break
        time.sleep(pause_s)


def _http_upsert(base: str, key: str) -> Callable[[dict[str, Any]], str]:
    def write(record: dict[str, Any]) -> str:
        request = urllib.request.Request(
            base + "/v1/leads",
            data=json.dumps(record).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return str(json.loads(answer.read())["request_id"])
        except urllib.error.HTTPError as exc:
            raise OSError(f"HTTP {exc.code}") from None

    return write


@contextlib.contextmanager
def api_process(env: dict[str, str], port: int) -> Iterator[str]:
    """``leadsync api`` as a real process on ``port``: its base URL once /healthz answers;
    SIGTERM (then SIGKILL) on exit."""
    process = subprocess.Popen(
        [LEADSYNC, "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, "leadsync api exited"
                assert time.monotonic() < deadline, "leadsync api did not start"
                time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _api_key(url: str) -> str:
    async def make() -> str:
        client = worker_redis_client(Settings(redis_url=url))
        try:
            key, _ = await KeyStore(client, Keys()).create("failover", ["write", "read"], None)
            return key
        finally:
            await client.aclose()

    return asyncio.run(make())


def _with_doubt(verdict: Verdict, pipeline: Pipeline, writers: dict[str, Writer]) -> Verdict:
    """A key whose Marketo value is a write tried after its last acknowledged one (never
    acknowledged, so the app was told to retry it) is not stale."""
    values = {
        f"email:{str(lead.get('email')).lower()}": lead["attributes"]
        for lead in pipeline.sim.admin.leads()
    }
    doubt = {k: v for w in writers.values() for k, v in w.in_doubt.items()}
    stale = tuple(
        key
        for key in verdict.stale_in_marketo
        if not any(
            all(values.get(key, {}).get(n) == x for n, x in tried.items())
            for tried in doubt.get(key, [])
        )
    )
    return dataclasses.replace(verdict, stale_in_marketo=stale)


def run_failover(
    fault: str,
    *,
    before_s: float = 3.0,
    after_s: float = 8.0,
    settle_s: float = 90.0,
    people: int = 30,
    pause_s: float = 0.01,
    replicas: int = 1,
) -> FailoverReport:
    """``settle_s``: how long acknowledged upserts may take to end terminal after the
    writers stop (a kill sometimes leaves the new master without a confirming replica
    for a while: upserts and leases then wait for WAIT; slow, not lost).
    ``fault``: "kill" (SIGKILL the master; its pod restarts it a second later, as a
    replica of the new master, as the HA overlay's start script does) or "freeze" (SIGSTOP it past the sentinels'
    timeout, then SIGCONT: it wakes as a stale master and is demoted)."""
    # Two replicas: with LEADSYNC_ENQUEUE_REPLICAS=1 a master needs one replica left after
    # a failover to take writes (with one, intake waits for the failed node to come back
    # and be made a replica: ~10 s of sentinel INFO period after it restarts).
    # min-replicas-to-write stays 0, as deploy/redis.conf ships it: a stale master
    # answering NOREPLICAS makes Celery's worker exit (kombu calls it unrecoverable);
    # leadsync's own writes there are never acknowledged (WAIT sees no replica).
    with sentinel_set(down_after_ms=1000, failover_timeout_ms=3000, replicas=2) as cluster:
        url = cluster.url()
        env = {
            **FAST_RECOVERY_ENV,
            "LEADSYNC_ENQUEUE_REPLICAS": str(replicas),
            "LEADSYNC_REPLICA_WAIT_S": "0.5",
            "LEADSYNC_RATE_LIMIT_CALLS": str(RATE_CALLS),
            "LEADSYNC_RATE_LIMIT_WINDOW_S": str(RATE_WINDOW_S),
            "LEADSYNC_RATE_BURST_CALLS": "4",
            "LEADSYNC_REDIS_CONNECT_TIMEOUT_S": "1",
        }
        sim = SimConfig(rate_limit_calls=RATE_CALLS, rate_window_s=RATE_WINDOW_S)
        with (
            running_pipeline(url, sim_config=sim, settings_env=env, shards=SHARDS) as pipeline,
            _restart_policy(pipeline) as restarts,
        ):
            report = _write_through(
                pipeline, cluster, fault, before_s, after_s, settle_s, people, pause_s, replicas
            )
            return dataclasses.replace(report, worker_restarts=len(restarts))


@contextlib.contextmanager
def _restart_policy(pipeline: Pipeline, every_s: float = 0.5) -> Iterator[list[float]]:
    """One worker, started again whenever it exits (Kubernetes' restartPolicy: Always):
    yields the times it was restarted."""
    restarts: list[float] = []
    stop = threading.Event()
    worker = pipeline.start_worker(concurrency=2)

    def watch() -> None:
        nonlocal worker
        while not stop.wait(every_s):
            if worker.poll() is not None:
                restarts.append(time.time())
                worker = pipeline.start_worker(concurrency=2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield restarts
    finally:
        stop.set()
        watcher.join(timeout=5)


def _write_through(
    pipeline: Pipeline,
    cluster: SentinelSet,
    fault: str,
    before_s: float,
    after_s: float,
    settle_s: float,
    people: int,
    pause_s: float,
    replicas: int,
) -> FailoverReport:
    url = pipeline.redis_url
    process_env = {**os.environ, **pipeline.env}
    client = redis_client(url, variable="redis_url", socket_timeout=1, connect_timeout=1)
    producer = LeadProducer(client, shards=SHARDS, owns_client=True, replicas=replicas,
                            replica_wait_s=0.5)  # fmt: skip
    key = _api_key(url)
    writers = {"producer": Writer("p"), "api": Writer("a")}
    timings: dict[str, list[float]] = {"producer": [], "api": []}
    stop = threading.Event()
    with producer, api_process(process_env, free_port()) as base:

        def upsert(record: dict[str, Any]) -> str:
            return producer.upsert(email=record["email"], attributes=record["attributes"])

        threads = [
            threading.Thread(
                target=_ack_loop,
                args=(writers["producer"], stop, people, upsert, timings["producer"], pause_s),
            ),
            threading.Thread(
                target=_ack_loop,
                args=(
                    writers["api"],
                    stop,
                    people,
                    _http_upsert(base, key),
                    timings["api"],
                    pause_s,
                ),
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(before_s)
            fault_at = time.time()
            if fault == "kill":
                port = cluster.kill_master()
                cluster.wait_for_failover(port)
                time.sleep(max(0.0, fault_at + 1.0 - time.time()))
                cluster.restart(port)
            else:
                port = cluster.freeze()
                cluster.wait_for_failover(port)
                time.sleep(1.0)
                cluster.thaw(port)
            time.sleep(max(0.0, fault_at + after_s - time.time()))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        log = WriteLog()
        for writer in writers.values():
            log.writes.extend(writer.log.writes)
        outcomes = pipeline.wait_all(log.request_ids, timeout_s=settle_s)
    verdict = _with_doubt(check_pipeline(pipeline, log, outcomes), pipeline, writers)
    if os.environ.get("LEADSYNC_FAILOVER_DEBUG"):
        print(pipeline.logs()[-20000:])
        print(pipeline.sim.admin.summary())
        leads = {str(x.get("email")).lower(): x for x in pipeline.sim.admin.leads()}
        for stale in verdict.stale_in_marketo:
            print("STALE", stale, "marketo:", leads.get(stale.removeprefix("email:")))
            for w in log.writes:
                if w.key == stale:
                    print("   ", w.request_id, w.attributes, outcomes.get(w.request_id))
        print("fault_at", fault_at)
        for c in pipeline.sim.admin.calls():
            print("CALL", c.get("start"), c.get("outcome"), len(c.get("keys", [])))
    calls_after = [c["start"] for c in pipeline.sim.admin.calls() if c["start"] > fault_at]
    return FailoverReport(
        fault=fault,
        acknowledged=len(log.writes),
        verdict=verdict,
        summary=pipeline.sim.admin.summary(),
        intake_resumed_s={name: w.first_ack_after(fault_at) for name, w in writers.items()},
        delivery_resumed_s=min(calls_after) - fault_at if calls_after else None,
        refusals={name: w.refusals for name, w in writers.items()},
        enqueue_ms=timings,
        log_tail=pipeline.logs()[-6000:],
    )
