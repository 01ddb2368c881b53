"""Crash safety: a worker killed at any point of a drain cycle loses nothing.

Real Redis, real Celery worker subprocesses, the simulator over HTTP. A worker started
with LEADSYNC_FAULT_POINT SIGKILLs its pool child or its main process at one point of the
cycle; a fresh worker then has to finish every request exactly once (see
tests/support/invariants.py for what "exactly once" means here).
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from marketo_sim.config import SimConfig
from producers.contract import Outcome
from tests.support.invariants import (
    WriteLog,
    applied_calls,
    check,
    check_pipeline,
    ledger_residue,
    numbered_records,
    rewritten_finals,
)
from tests.support.pipeline import FAST_RECOVERY_ENV, Pipeline, running_pipeline, wait_for
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHARDS = 4
LEASE_TTL_S = float(FAST_RECOVERY_ENV["LEADSYNC_LEASE_TTL_S"])
#: Batches of 100 so that a run takes several calls; many attempts, so that repeated
#: child crashes never push an entry into the dead-letter stream.
ENV = {**FAST_RECOVERY_ENV, "LEADSYNC_BATCH_SIZE": "100", "LEADSYNC_MAX_ATTEMPTS": "50"}
#: billiard's log line when a pool child dies of SIGKILL.
CHILD_KILLED = "exited with 'signal 9 (SIGKILL)'"


def snapshot(pipeline: Pipeline, request_ids: list[str]) -> dict[str, Outcome | None]:
    return dict(zip(request_ids, pipeline.producer.outcomes(request_ids), strict=True))


def wait_until_crashed(pipeline: Pipeline, worker: subprocess.Popen[bytes], target: str) -> None:
    """The main process is gone, or the pool lost a child; then the whole worker is stopped."""
    if target == "main":
        worker.wait(timeout=60)
        assert worker.returncode == -signal.SIGKILL
        pipeline.stop_worker(worker, signal.SIGKILL)  # reap the group (beat, leftovers)
    else:
        assert wait_for(lambda: CHILD_KILLED in pipeline.logs(), 60), "no pool child died"
        assert worker.poll() is None, "killing a pool child must not take the worker down"
        # A warm stop of the main process only: in-flight cycles run to the crash point,
        # nothing is cut elsewhere (SIGTERM to the whole group would kill a child mid-call).
        pipeline.stop_worker(worker, signal.SIGTERM, main_only=True)


@pytest.mark.parametrize("target", ["child", "main"])
@pytest.mark.parametrize("point", ["after_claim", "after_send", "after_commit"])
def test_a_worker_killed_at_any_point_of_a_cycle_loses_nothing_and_a_fresh_worker_finishes(
    redis_url: str, point: str, target: str
) -> None:
    log = WriteLog()
    with running_pipeline(
        redis_url, sim_config=SimConfig(latency_s=0.05), settings_env=ENV, shards=SHARDS
    ) as pipeline:
        request_ids = log.upsert_many(
            pipeline.producer, numbered_records(600, people=250, tag=point)
        )
        # One pool process: killing the main process also kills its other children, and a
        # second child's call in flight would be sent again legitimately (at least once),
        # which would blur what each crash point promises.
        faulty = pipeline.start_worker(
            concurrency=1, extra_env={"LEADSYNC_FAULT_POINT": f"{point}:{target}"}
        )
        wait_until_crashed(pipeline, faulty, target)
        calls_before = pipeline.sim.admin.calls()
        before = snapshot(pipeline, request_ids)

        pipeline.start_worker(concurrency=2)
        outcomes = pipeline.wait_all(request_ids, timeout_s=60)
        calls = pipeline.sim.admin.calls()
        summary = pipeline.sim.admin.summary()
        verdict = check(
            log,
            outcomes,
            calls=calls,
            leads=pipeline.sim.admin.leads(),
            keys_in_concurrent_calls=summary["keys_in_concurrent_calls"],
        )
        # A lease left by the killed cycle expires; nothing stays behind in the ledger.
        assert wait_for(lambda: ledger_residue(redis_url, SHARDS).empty, LEASE_TTL_S + 5), (
            ledger_residue(redis_url, SHARDS)
        )

    assert not verdict.problems(), verdict.problems()
    assert not rewritten_finals(before, outcomes), "a final outcome was written twice"
    sent_before = sum(len(c["keys"]) for c in applied_calls(calls_before))
    if point == "after_claim":
        assert sent_before == 0, "the crash comes before anything is sent"
        assert verdict.redundant_sends == 0
    elif point == "after_send":
        # The killed batch was applied but never committed: every key of it goes out again
        # (merged with any newer write of it), once more per crash at most, and nothing
        # else is sent twice.
        killed = {k for c in applied_calls(calls_before) for k in c["keys"]}
        later = {k for c in applied_calls(calls[len(calls_before) :]) for k in c["keys"]}
        assert killed, "the crash comes after a send"
        assert killed <= later, "an applied but uncommitted batch was not sent again"
        assert verdict.redundant_sends <= sent_before
    else:
        assert any(o is not None and o.status.is_final for o in before.values()), (
            "the crash comes after a commit"
        )
        assert verdict.redundant_sends == 0, "a committed batch was sent again"


def test_a_graceful_sigterm_mid_run_leaves_nothing_half_done_and_a_restart_finishes(
    redis_url: str,
) -> None:
    log = WriteLog()
    with running_pipeline(
        redis_url, sim_config=SimConfig(latency_s=0.3), settings_env=ENV, shards=SHARDS
    ) as pipeline:
        request_ids = log.upsert_many(pipeline.producer, numbered_records(600, people=250))
        worker = pipeline.start_worker(concurrency=2)
        assert wait_for(lambda: len(pipeline.sim.admin.calls()) >= 2, 30), "no call went out"
        # What Kubernetes does: SIGTERM to the main process only; it lets running cycles end.
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=40)
        assert worker.returncode == 0, "the warm shutdown did not finish on its own"
        pipeline.stop_worker(worker, signal.SIGKILL)
        stopped = snapshot(pipeline, request_ids)
        residue = ledger_residue(redis_url, SHARDS)

        pipeline.start_worker(concurrency=2)
        outcomes = pipeline.wait_all(request_ids, timeout_s=60)
        verdict = check_pipeline(pipeline, log, outcomes)
        assert wait_for(lambda: ledger_residue(redis_url, SHARDS).empty, LEASE_TTL_S + 5)

    assert residue.leases == 0, "a stopped worker must release its shard leases"
    assert all(o is not None for o in stopped.values()), "every request is final or PENDING"
    assert any(o is not None and o.status.is_final for o in stopped.values())
    assert not verdict.problems(), verdict.problems()
    assert not rewritten_finals(stopped, outcomes)
    assert verdict.redundant_sends == 0, "a graceful stop must not cut a call in half"


def test_upserts_acknowledged_before_redis_is_killed_and_restarted_all_end_final() -> None:
    """Redis runs with AOF (appendfsync everysec) and is killed with SIGKILL mid-run.

    Redis write()s the AOF buffer before it replies, but fsyncs only once a second and may
    postpone a write by up to ~2 s while a background fsync runs. So a kill could, in
    theory, lose the last ~1 s of acknowledged writes; the test waits 1.5 s after the last
    acknowledged upsert before the kill, so only a real loss fails it.
    """
    log = WriteLog()
    server = RedisServer(appendonly=True).start()
    env = {**ENV, "LEADSYNC_BATCH_SIZE": "50"}
    try:
        with running_pipeline(
            server.url, sim_config=SimConfig(latency_s=0.5), settings_env=env, shards=SHARDS
        ) as pipeline:
            log.upsert_many(pipeline.producer, numbered_records(600, people=125, tag="early"))
            worker = pipeline.start_worker(concurrency=1)
            assert wait_for(lambda: len(applied_calls(pipeline.sim.admin.calls())) >= 2, 30)
            # Single acknowledged XADDs while the worker drains.
            for record in numbered_records(100, people=100, tag="during"):
                log.upsert(pipeline.producer, record)
            time.sleep(1.5)
            backlog_at_kill = ledger_residue(server.url, SHARDS).entries
            server.kill()
            time.sleep(1.0)
            server.start()
            log.upsert_many(pipeline.producer, numbered_records(100, people=100, tag="after"))
            outcomes = pipeline.wait_all(log.request_ids, timeout_s=60)
            verdict = check(
                log, outcomes, calls=pipeline.sim.admin.calls(), leads=pipeline.sim.admin.leads()
            )
            worker_alive = worker.poll() is None
    finally:
        server.cleanup()

    assert backlog_at_kill > 0, "Redis must die mid-run"
    assert not verdict.problems(), verdict.problems()
    assert worker_alive, "the worker must ride out a Redis restart"
