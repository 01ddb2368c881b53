"""Three worker processes, each with its own beat, share one rate window and one set of
concurrency slots: the simulator (configured with the same limits) never sees more."""

from __future__ import annotations

import pytest
import redis.asyncio

from marketo_sim.config import SimConfig
from tests.support.invariants import WriteLog, check_pipeline, numbered_records
from tests.support.pipeline import FAST_RECOVERY_ENV, running_pipeline
from worker.limits import WINDOW_MARGIN_S, Denied, Permit, RedisLimiter
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RATE_CALLS = 10
WINDOW_S = 2.0
MAX_CONCURRENT = 2


def test_three_workers_never_exceed_the_shared_rate_window_or_concurrency(
    redis_url: str,
) -> None:
    log = WriteLog()
    env = {
        **FAST_RECOVERY_ENV,
        "LEADSYNC_BATCH_SIZE": "10",
        "LEADSYNC_RATE_LIMIT_CALLS": str(RATE_CALLS),
        # The same window as Marketo's: the limiter keeps its own margin for arrival jitter.
        "LEADSYNC_RATE_LIMIT_WINDOW_S": str(WINDOW_S),
        "LEADSYNC_MAX_CONCURRENT_CALLS": str(MAX_CONCURRENT),
    }
    sim = SimConfig(
        rate_limit_calls=RATE_CALLS,
        rate_window_s=WINDOW_S,
        max_concurrent=MAX_CONCURRENT,
        latency_s=0.5,  # longer than the spacing, so calls overlap up to the slots
    )
    with running_pipeline(redis_url, sim_config=sim, settings_env=env, shards=8) as pipeline:
        # 40 calls of 10: without the shared limits, six pool processes would go far faster.
        request_ids = log.upsert_many(pipeline.producer, numbered_records(400, people=400))
        for _ in range(3):  # every one with beat: two ticks at once must be harmless
            pipeline.start_worker(concurrency=2, beat=True)
        outcomes = pipeline.wait_all(request_ids, timeout_s=80)
        summary = pipeline.sim.admin.summary()
        verdict = check_pipeline(pipeline, log, outcomes)

    assert not verdict.problems(), verdict.problems()
    assert summary["faults_by_code"].get("20023", 0) == 0, summary["faults_by_code"]
    assert summary["faults_by_code"].get("20024", 0) == 0, summary["faults_by_code"]
    assert summary["max_calls_in_window"] <= RATE_CALLS
    assert summary["max_concurrency"] <= MAX_CONCURRENT
    # The limits were reached, not merely left alone: grants are spaced one per
    # (window + margin) / calls, so the margin may cost one call of the window.
    assert summary["max_calls_in_window"] >= int(
        RATE_CALLS * WINDOW_S / (WINDOW_S + WINDOW_MARGIN_S)
    )
    assert summary["max_concurrency"] == MAX_CONCURRENT


async def test_a_permit_at_the_window_edge_waits_out_a_margin_for_transport_jitter(
    redis_url: str,
) -> None:
    now_s = [1_800_000_000.0]
    settings = Settings.from_env(
        redis_url=redis_url,
        rate_limit_calls=RATE_CALLS,
        rate_limit_window_s=WINDOW_S,
        max_concurrent_calls=100,
        rate_burst_calls=RATE_CALLS,  # the whole window at once: the sliding log decides
    )
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(redis_url)
    try:
        limiter = RedisLimiter(client, settings, clock=lambda: now_s[0])
        for _ in range(RATE_CALLS):
            permit = await limiter.acquire("w")
            assert isinstance(permit, Permit)
            await limiter.release(permit)
        # 5 ms past the window: if this call's request is 5 ms faster on the wire than
        # the first one's, Marketo sees 11 calls in its window.
        now_s[0] += WINDOW_S + 0.005
        refused = await limiter.acquire("w")
    finally:
        await client.aclose()
    assert isinstance(refused, Denied)
    assert refused.reason == "rate"
