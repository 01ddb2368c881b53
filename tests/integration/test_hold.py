"""Bad credentials put the pipeline on hold: nothing is burnt into FAILED, leads stay
PENDING, one probe per interval goes out; once the key is right again the flow resumes."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import redis.asyncio

from marketo_sim.config import SimConfig
from producers.contract import OutcomeStatus
from tests.support.invariants import WriteLog, check, numbered_records
from tests.support.pipeline import FAST_RECOVERY_ENV, running_pipeline, wait_for
from worker.limits import LimiterState, RedisLimiter
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROTATED_KEY = "rotated-encryption-key"
PROBE_INTERVAL_S = float(FAST_RECOVERY_ENV["LEADSYNC_HOLD_PROBE_INTERVAL_S"])
HOLD_S = 5.0
WORKER_CONCURRENCY = 2


def limiter_state(redis_url: str) -> LimiterState:
    async def read() -> LimiterState:
        client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await RedisLimiter(client, Settings.from_env(redis_url=redis_url)).state()
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_a_wrong_key_holds_every_lead_pending_and_the_flow_resumes_once_it_is_fixed(
    redis_url: str,
) -> None:
    log = WriteLog()
    env = {
        **FAST_RECOVERY_ENV,
        # The worker signs with a key Marketo does not know (yet).
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": ROTATED_KEY,
        # Fewer attempts than probes during the hold: a refused call must not count.
        "LEADSYNC_MAX_ATTEMPTS": "3",
    }
    with running_pipeline(
        redis_url, sim_config=SimConfig(latency_s=0.02), settings_env=env, shards=4
    ) as pipeline:
        request_ids = log.upsert_many(pipeline.producer, numbered_records(200, people=200))
        pipeline.start_worker(concurrency=WORKER_CONCURRENCY)
        assert wait_for(lambda: limiter_state(redis_url).hold_reason is not None, 30)
        held_at = time.monotonic()
        time.sleep(HOLD_S)
        held_s = time.monotonic() - held_at
        held_calls = pipeline.sim.admin.calls()
        held = pipeline.producer.outcomes(request_ids)
        hold_reason = limiter_state(redis_url).hold_reason
        logs = pipeline.logs()

        pipeline.sim.admin.configure(encryption_key=ROTATED_KEY)  # Marketo now has the new key
        outcomes = pipeline.wait_all(request_ids, timeout_s=30)
        resumed_state = limiter_state(redis_url)
        verdict = check(
            log, outcomes, calls=pipeline.sim.admin.calls(), leads=pipeline.sim.admin.leads()
        )

    assert hold_reason is not None
    assert "20014" in hold_reason
    assert "on hold" in logs
    assert all(o is not None and o.status is OutcomeStatus.PENDING for o in held), (
        "while on hold every lead stays PENDING (nothing FAILED or dead-lettered)"
    )
    assert {c["fault_code"] for c in held_calls} == {20014}
    # Before the hold each pool process may have tried once; then one probe per interval.
    most = WORKER_CONCURRENCY + math.ceil(held_s / PROBE_INTERVAL_S) + 1
    assert len(held_calls) <= most, f"{len(held_calls)} calls while on hold"
    assert len(held_calls) >= 3, "probes keep going out while on hold"
    assert not verdict.problems(), verdict.problems()
    assert set(verdict.statuses) == {"CREATED"}
    assert resumed_state.hold_reason is None
