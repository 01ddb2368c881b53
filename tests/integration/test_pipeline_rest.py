"""The pipeline over Marketo REST (LEADSYNC_MARKETO_API=rest), end to end: real Redis, real
Celery workers, the simulator's leads.json and identity endpoint over HTTP. The same
promises as over SOAP: every upsert one final outcome, Marketo holding each lead's last
write, no key in two calls at once; and one token for the whole cluster."""

from __future__ import annotations

import time

import pytest

from marketo_sim.config import SimConfig
from tests.support.invariants import WriteLog, check_pipeline, ledger_residue, numbered_records
from tests.support.pipeline import FAST_RECOVERY_ENV, running_pipeline, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SHARDS = 8

REST_FAULTS = SimConfig(
    fault_hang_rate=0.03,
    fault_http_502_rate=0.04,
    fault_truncated_rate=0.04,
    fault_timeout_604_rate=0.04,
    fault_unavailable_608_rate=0.03,
    fault_transient_713_rate=0.03,
    fault_rate_606_rate=0.04,
    fault_concurrency_615_rate=0.04,
    hang_s=float(FAST_RECOVERY_ENV["LEADSYNC_REQUEST_TIMEOUT_S"]) + 2,
    latency_s=0.02,
    rate_limit_calls=100_000,
    max_concurrent=100,
)


def test_leads_reach_marketo_over_rest_through_faults_and_a_token_expiring_mid_run(
    redis_url: str,
) -> None:
    log = WriteLog()
    env = {**FAST_RECOVERY_ENV, "LEADSYNC_BATCH_SIZE": "5"}
    with running_pipeline(
        redis_url, sim_config=REST_FAULTS, settings_env=env, shards=SHARDS, api="rest"
    ) as pipeline:
        records = numbered_records(600, people=60)
        # Two worker processes of two pool processes each: four processes, one token.
        pipeline.start_worker(concurrency=2)
        pipeline.start_worker(concurrency=2)
        warm_up = log.upsert_many(pipeline.producer, records[:1])
        pipeline.wait_all(warm_up, timeout_s=30)
        request_ids = list(warm_up)
        for wave in range(1, len(records), 50):
            request_ids += log.upsert_many(pipeline.producer, records[wave : wave + 50])
            if wave == 301:
                assert pipeline.sim.admin.expire_token(), "a token was live mid-run"
            time.sleep(0.25)
        outcomes = pipeline.wait_all(request_ids, timeout_s=120)
        summary = pipeline.sim.admin.summary()
        verdict = check_pipeline(pipeline, log, outcomes)
        residue_gone = wait_for(lambda: ledger_residue(redis_url, SHARDS).empty, 10)
        assert residue_gone, (ledger_residue(redis_url, SHARDS), verdict.problems()[:3])

    assert not verdict.problems(), verdict.problems()
    assert summary["calls_by_protocol"].get("soap", 0) == 0, summary["calls_by_protocol"]
    injected = {**summary["outcomes"], **summary["faults_by_code"]}
    for kind in ("hang", "http_502", "truncated", "604", "606", "615"):
        assert injected.get(kind, 0) > 0, f"no {kind} was injected: {injected}"
    # One token at the start, one after the forced expiry: not one per worker process.
    tokens = summary["identity"]["tokens_issued"]
    assert 2 <= tokens <= 3, summary["identity"]


def test_an_unknown_field_over_rest_fails_only_its_records_and_costs_no_extra_call(
    redis_url: str,
) -> None:
    with running_pipeline(redis_url, shards=1, api="rest") as pipeline:
        good = [{"email": f"ok{i}@example.com", "attributes": {"Company": "A"}} for i in range(40)]
        bad = [
            {"email": f"bad{i}@example.com", "attributes": {"NoSuchField": "x"}} for i in range(3)
        ]
        request_ids = pipeline.producer.upsert_many(good[:20] + bad + good[20:])
        pipeline.start_worker(concurrency=1)
        outcomes = pipeline.wait_all([str(r) for r in request_ids], timeout_s=60)
        calls = pipeline.sim.admin.calls()

    statuses = [outcomes[str(r)] for r in request_ids]
    failed = [o for o in statuses if o and o.status.value == "FAILED"]
    assert len(failed) == 3
    assert all(
        o.error_code == "1006" and "NoSuchField".lower() in (o.error or "").lower() for o in failed
    )
    assert sum(1 for o in statuses if o and o.status.value == "CREATED") == 40
    assert len(calls) == 1, "Marketo reports per record: no isolation calls"
