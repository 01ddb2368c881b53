"""A whole pipeline on a Sentinel set, written to without a pause while its master fails.

Real processes: master, two replicas and three sentinels (``tests.support.sentinel_set``),
a Celery worker with its beat, ``leadsync api``, and the simulator over HTTP. Two writers
run in threads during the fault, each retrying a write until it is acknowledged (as an
app does) before writing the person's next value: a producer and the HTTP API, both with
``LEADSYNC_ENQUEUE_REPLICAS=1`` (or 0, the default, where an acknowledged upsert may be
lost: counted, not a broken promise). Marketo's window is scaled down to
:data:`RATE_CALLS` calls per :data:`RATE_WINDOW_S` and batches to :data:`BATCH_SIZE`
leads, and the writers write faster than that carries, so the limiter, not the inflow,
sets the pace before and after the fault (:meth:`FailoverReport.unsaturated`). Used by
the failover test (short) and ``bench failover`` (longer).
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from marketo_sim.calllog import max_in_window
from marketo_sim.config import SimConfig
from producers import LeadProducer, LeadsyncError, Outcome
from producers.connect import redis_client
from producers.contract import Keys
from tests.support.invariants import Verdict, Write, WriteLog, check_pipeline, redundant_sends
from tests.support.pipeline import FAST_RECOVERY_ENV, Pipeline, running_pipeline
from tests.support.redis_server import free_port
from tests.support.sentinel_set import SentinelSet, sentinel_set
from worker.api.auth import KeyStore
from worker.connections import redis_client as worker_redis_client
from worker.limits.base import WINDOW_MARGIN_S
from worker.settings import Settings

LEADSYNC = str(Path(sys.executable).with_name("leadsync"))
#: Marketo's window, scaled down so a run sees many and fills them: the simulator enforces
#: it, leadsync's limiter keeps to it.
RATE_CALLS = 5
RATE_WINDOW_S = 2.0
#: Leads per call: small, so the writers' inflow needs more calls than the window allows.
BATCH_SIZE = 5
SHARDS = 4
#: The most calls leadsync's limiter lets go in one window when it is the bottleneck: it
#: spaces grants one per (window + margin) / calls, so the margin may cost one call.
SATURATED_CALLS = int(RATE_CALLS * RATE_WINDOW_S / (RATE_WINDOW_S + WINDOW_MARGIN_S))
#: Leads a second that fit through the limiter: the writers must outpace this.
CARRIED_PER_S = RATE_CALLS * BATCH_SIZE / (RATE_WINDOW_S + WINDOW_MARGIN_S)
#: Each writer's people, and its pause after each acknowledged write (two writers: about
#: 16 upserts a second together, a person every 2-3 s).
PEOPLE = 20
PAUSE_S = 0.12


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
    #: LEADSYNC_ENQUEUE_REPLICAS of the writers and the worker.
    replicas: int
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
    #: Most calls Marketo saw in one rate window before the fault and from it on.
    window_before: int = 0
    window_after: int = 0
    #: Acknowledged upserts unknown to leadsync after the run (rolled back with the old
    #: master): allowed with replicas=0 only, where the verdict covers the others (and a
    #: key holding a lost write newer than its last kept one is not stale).
    lost: int = 0
    #: Keys whose newest acknowledged value was among them (Marketo holds an older one).
    lost_newest: int = 0
    #: Keys acknowledged both before the fault and after it (where a rolled-back lease,
    #: rest or ledger could let an old value overwrite a newer one).
    keys_across_fault: int = 0

    @property
    def case(self) -> str:
        return self.fault if self.replicas else f"{self.fault}, replicas=0"

    def brief(self) -> str:
        """The figures without the timings or the log (an assertion message)."""
        return (
            f"{self.case}: acknowledged={self.acknowledged} lost={self.lost} "
            f"intake_resumed_s={self.intake_resumed_s} "
            f"delivery_resumed_s={self.delivery_resumed_s} refusals={self.refusals} "
            f"calls={self.summary['calls']} window_before={self.window_before} "
            f"window_after={self.window_after} keys_across_fault={self.keys_across_fault} "
            f"worker_restarts={self.worker_restarts} "
            f"problems={self.problems()}"
        )

    def unsaturated(self) -> list[str]:
        """Where the calls did not fill the rate window (so the run did not show that a
        failover lets no burst past it): empty when both sides did."""
        return [
            f"at most {most} calls in a {RATE_WINDOW_S:g} s window {side} the fault "
            f"(the limiter allows {SATURATED_CALLS}-{RATE_CALLS})"
            for side, most in (("before", self.window_before), ("after", self.window_after))
            if most < SATURATED_CALLS
        ]

    def problems(self) -> list[str]:
        found = self.verdict.problems()
        if self.lost and self.replicas:
            found.append(f"{self.lost} acknowledged upserts were lost")
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


def _with_doubt(
    verdict: Verdict,
    pipeline: Pipeline,
    writers: dict[str, Writer],
    lost: Sequence[Write] = (),
) -> Verdict:
    """A key whose Marketo value is a write tried after its last acknowledged one (never
    acknowledged, so the app was told to retry it) is not stale; nor, with replicas=0, is
    one holding an acknowledged write that was lost after its last surviving one (it may
    have reached Marketo before the failover took it from the ledger)."""
    values = {
        f"email:{str(lead.get('email')).lower()}": lead["attributes"]
        for lead in pipeline.sim.admin.leads()
    }
    doubt = {k: list(v) for w in writers.values() for k, v in w.in_doubt.items()}
    for write in lost:
        doubt.setdefault(write.key, []).append(dict(write.attributes))
    stale = tuple(
        key
        for key in verdict.stale_in_marketo
        if not any(
            all(values.get(key, {}).get(n) == x for n, x in tried.items())
            for tried in doubt.get(key, [])
        )
    )
    return dataclasses.replace(verdict, stale_in_marketo=stale)


def _settle(
    redis_url: str, request_ids: Sequence[str], timeout_s: float
) -> dict[str, Outcome | None]:
    """Poll until no request is PENDING any more (final, or unknown: lost with the old
    master) or the time is up; the last look at each. Each look is a new producer, which
    asks the sentinels for the master: a connection made before the fault may still
    reach the demoted master, which may not hold every entry yet."""
    deadline = time.monotonic() + timeout_s
    latest: dict[str, Outcome | None] = dict.fromkeys(request_ids)
    waiting = list(request_ids)
    unknown_since: dict[str, float] = {}
    while waiting:
        still = []
        try:
            with LeadProducer.from_url(redis_url, shards=SHARDS) as producer:
                for start in range(0, len(waiting), 2000):
                    part = waiting[start : start + 2000]
                    for rid, outcome in zip(part, producer.outcomes(part), strict=True):
                        latest[rid] = outcome
                        if outcome is None:  # lost once it stays unknown for a second
                            since = unknown_since.setdefault(rid, time.monotonic())
                            if time.monotonic() - since < 1.0:
                                still.append(rid)
                        elif not outcome.status.is_final:
                            unknown_since.pop(rid, None)
                            still.append(rid)
        except (redis.ConnectionError, redis.TimeoutError):
            still = waiting
        waiting = still
        if waiting:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return latest


def run_failover(
    fault: str,
    *,
    before_s: float = 3.0,
    after_s: float = 5.0,
    settle_s: float = 90.0,
    people: int = PEOPLE,
    pause_s: float = PAUSE_S,
    replicas: int = 1,
) -> FailoverReport:
    """``fault``: "kill" (SIGKILL the master; its pod restarts it a second later, as a
    replica of the master the sentinels name, as the HA overlay's start script does) or
    "freeze" (SIGSTOP it past the sentinels' timeout, then SIGCONT: it wakes as a stale
    master and is demoted).
    ``before_s``: writing before the fault, once the pipeline has delivered a first
    upsert; ``after_s``: writing from the fault on. Each writer writes ``people``
    people in turn with ``pause_s`` between acknowledged writes: about 16 upserts a
    second together, more than the window carries (:data:`CARRIED_PER_S`), so calls fill
    the window before the fault, and the backlog the fault leaves fills it after; a
    person is written every few seconds, so many are written on both sides of the fault.
    ``settle_s``: how long acknowledged upserts may take to end terminal after the
    writers stop (a kill sometimes leaves the new master without a confirming replica
    for a while: upserts and leases then wait for WAIT; slow, not lost).
    ``replicas``: LEADSYNC_ENQUEUE_REPLICAS everywhere; with 0 an acknowledged upsert
    the failover rolled back is counted in ``lost`` and the verdict covers the rest."""
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
            "LEADSYNC_BATCH_SIZE": str(BATCH_SIZE),
            # Calls go full while the writers outpace them (a partial one only once an
            # entry has waited 1 s), so a backlog takes as few calls as it can.
            "LEADSYNC_FLUSH_INTERVAL_S": "1",
            # Partial batches are never held for the daily quota's pace (a long bench
            # run makes more calls than the pace's default burst).
            "LEADSYNC_PACE_BURST_CALLS": "5000",
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


def _delivering(pipeline: Pipeline, timeout_s: float = 60.0) -> Write:
    """Until the worker has delivered one upsert (it and its beat are up), so that the
    writers' first seconds fill the window instead of waiting for a worker to start; the
    probe's write (checked with the others)."""
    record: dict[str, Any] = {
        "email": "failover-probe@example.com",
        "attributes": {"Company": "probe"},
    }
    rid = pipeline.producer.upsert(email=record["email"], attributes=record["attributes"])
    outcome = pipeline.producer.wait_outcome(rid, timeout_s)
    assert outcome.status.is_final, f"the worker delivered nothing in {timeout_s:g} s"
    probe = WriteLog()
    probe.acknowledged(rid, record)
    return probe.writes[0]


def _fail(cluster: SentinelSet, fault: str, fault_at: float) -> None:
    """``kill``: SIGKILL the master, and 1 s after ``fault_at`` (the failover done) start
    it again as a replica of the master the sentinels name; ``freeze``: SIGSTOP it until
    the sentinels name a new master, 1 s more, then SIGCONT (a stale master)."""
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
    with ThreadPoolExecutor(1) as pool, producer:
        # The worker and the API start together (each takes seconds on a busy machine).
        delivering = pool.submit(_delivering, pipeline)
        with api_process(process_env, free_port()) as base:
            probe = delivering.result()

            def upsert(record: dict[str, Any]) -> str:
                return producer.upsert(email=record["email"], attributes=record["attributes"])

            loops = {"producer": upsert, "api": _http_upsert(base, key)}
            threads = [
                threading.Thread(
                    target=_ack_loop,
                    args=(writers[name], stop, people, write, timings[name], pause_s),
                )
                for name, write in loops.items()
            ]
            for thread in threads:
                thread.start()
            try:
                time.sleep(before_s)
                fault_at = time.time()
                _fail(cluster, fault, fault_at)
                time.sleep(max(0.0, fault_at + after_s - time.time()))
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=30)
            log = WriteLog([probe])
            for writer in writers.values():
                log.writes.extend(writer.log.writes)
            outcomes = _settle(pipeline.redis_url, log.request_ids, settle_s)
    # Acknowledged, then unknown: rolled back with the old master. A key's writes are
    # one writer's, in the order acknowledged.
    gone = [outcomes[w.request_id] is None for w in log.writes]
    lost = [w for w, g in zip(log.writes, gone, strict=True) if g]
    lost_newest = sum(gone[n] for n in {w.key: n for n, w in enumerate(log.writes)}.values())
    if replicas or not lost:
        verdict = _with_doubt(check_pipeline(pipeline, log, outcomes), pipeline, writers)
    else:  # allowed with replicas=0: the promises are checked on the rest
        kept = WriteLog([w for w, g in zip(log.writes, gone, strict=True) if not g])
        last_kept = {
            w.key: n for n, (w, g) in enumerate(zip(log.writes, gone, strict=True)) if not g
        }
        later = [
            w
            for n, (w, g) in enumerate(zip(log.writes, gone, strict=True))
            if g and n > last_kept.get(w.key, -1)
        ]
        verdict = dataclasses.replace(
            check_pipeline(pipeline, kept, outcomes),
            redundant_sends=redundant_sends(pipeline.sim.admin.calls(), log.writes_per_key()),
        )
        verdict = _with_doubt(verdict, pipeline, writers, later)
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
    sides: dict[str, set[bool]] = {}
    for writer in writers.values():  # each write's ack time, in the same order
        for write, at in zip(writer.log.writes, writer.acked_at, strict=True):
            sides.setdefault(write.key, set()).add(at > fault_at)
    starts = [c["start"] for c in pipeline.sim.admin.calls()]
    calls_after = [t for t in starts if t > fault_at]
    return FailoverReport(
        fault=fault,
        replicas=replicas,
        acknowledged=sum(len(w.log.writes) for w in writers.values()),
        verdict=verdict,
        summary=pipeline.sim.admin.summary(),
        intake_resumed_s={name: w.first_ack_after(fault_at) for name, w in writers.items()},
        delivery_resumed_s=min(calls_after) - fault_at if calls_after else None,
        refusals={name: w.refusals for name, w in writers.items()},
        enqueue_ms=timings,
        log_tail=pipeline.logs()[-6000:],
        window_before=max_in_window([t for t in starts if t < fault_at], RATE_WINDOW_S),
        window_after=max_in_window(calls_after, RATE_WINDOW_S),
        lost=len(lost),
        lost_newest=lost_newest,
        keys_across_fault=sum(len(both) == 2 for both in sides.values()),
    )
