"""The shared limiter over a real Redis: exact limits, sliding, expiry, hold and probes,
and no over-grant under many asyncio tasks or several processes."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio

from tests.unit.test_limits_clock import unix
from worker.limits import (
    CONCURRENCY_RETRY_S,
    SLOT_MARGIN_S,
    WINDOW_MARGIN_S,
    Denied,
    Permit,
    RedisLimiter,
)
from worker.settings import Settings

pytestmark = pytest.mark.integration

T0 = unix("2026-11-28T12:00:00")


class FakeClock:
    def __init__(self, now_s: float = T0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


MakeLimiter = Callable[..., RedisLimiter]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_limiter(redis_url: str, clock: FakeClock) -> AsyncIterator[MakeLimiter]:
    clients: list[redis.asyncio.Redis] = []

    def make(**overrides: Any) -> RedisLimiter:
        values: dict[str, Any] = {
            "rate_limit_calls": 1000,
            # The sliding log is tested here; even spacing has its own tests.
            "rate_burst_calls": 1000,
            "max_concurrent_calls": 1000,
            "daily_quota": 100_000,
        }
        values.update(overrides)
        client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(redis_url)
        clients.append(client)
        return RedisLimiter(client, Settings(**values), clock=clock)

    yield make
    for client in clients:
        await client.aclose()


async def take(
    limiter: RedisLimiter, holder: str = "pod-a", *, probe: bool = False, paced: bool = False
) -> Permit:
    result = await limiter.acquire(holder, probe=probe, paced=paced)
    assert isinstance(result, Permit), result
    return result


async def refused(limiter: RedisLimiter, holder: str = "pod-a", *, probe: bool = False) -> Denied:
    result = await limiter.acquire(holder, probe=probe)
    assert isinstance(result, Denied), result
    assert result.retry_after_s > 0
    return result


async def grants(calls: Sequence[Awaitable[Permit | Denied]]) -> list[Permit]:
    return [r for r in await asyncio.gather(*calls) if isinstance(r, Permit)]


# --- rate window ----------------------------------------------------------------------


async def test_exactly_n_calls_pass_in_a_window_then_the_next_waits_for_the_oldest(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=5, rate_limit_window_s=20)
    for _ in range(5):
        await take(limiter)
        clock.advance(1)
    denied = await refused(limiter)
    # the first call was at T0; it leaves the window (plus the arrival margin) at
    # T0 + 20 + margin, and now is T0 + 5
    assert denied.reason == "rate"
    assert denied.retry_after_s == pytest.approx(15 + WINDOW_MARGIN_S)


async def test_the_window_slides_one_call_at_a_time(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=3, rate_limit_window_s=20)
    for _ in range(3):  # calls at T0, T0+5, T0+10
        await take(limiter)
        clock.advance(5)
    clock.advance(4.9)  # T0 + 19.9: the first call is still in the window
    assert (await refused(limiter)).retry_after_s == pytest.approx(0.1 + WINDOW_MARGIN_S)
    clock.advance(0.1)  # T0 + 20: Marketo's window has let it go, ours keeps the margin
    assert (await refused(limiter)).retry_after_s == pytest.approx(WINDOW_MARGIN_S)
    clock.advance(WINDOW_MARGIN_S)
    await take(limiter)
    assert (await refused(limiter)).retry_after_s == pytest.approx(5)
    assert (await limiter.state()).calls_in_window == 3


# --- even spacing ---------------------------------------------------------------------


async def test_spaced_grants_use_the_whole_window_and_never_exceed_it(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Workers asking every 10 ms for 200 s: grants come one per interval, every window
    holds the calls Marketo allows less at most one for the margin, and never more."""
    limiter = make_limiter(rate_limit_calls=50, rate_limit_window_s=20, rate_burst_calls=1)
    interval_s = (20 + WINDOW_MARGIN_S) / 50
    granted: list[float] = []
    start = clock()
    while clock() < start + 200:
        result = await limiter.acquire("pod-a")
        if isinstance(result, Permit):
            granted.append(clock())
            await limiter.release(result)
        else:
            assert result.reason == "rate"
            assert result.retry_after_s <= interval_s + 1e-6
        clock.advance(0.01)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= interval_s - 0.011, "no bursts"
    windows = [sum(1 for t in granted if w <= t < w + 20) for w in granted if w + 20 <= granted[-1]]
    assert max(windows) <= 50
    assert min(windows) >= 49, "at least 98% of the window's calls"


async def test_a_burst_allowance_goes_back_to_back_then_grants_are_spaced(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=10, rate_limit_window_s=20, rate_burst_calls=3)
    interval_s = (20 + WINDOW_MARGIN_S) / 10
    for _ in range(3):
        await take(limiter)
    denied = await refused(limiter)
    assert denied.reason == "rate"
    assert denied.retry_after_s == pytest.approx(interval_s)
    clock.advance(interval_s)
    await take(limiter)
    assert (await refused(limiter)).retry_after_s == pytest.approx(interval_s)
    clock.advance(10 * interval_s)  # a quiet spell earns the burst back, no more
    for _ in range(3):
        await take(limiter)
    assert (await refused(limiter)).reason == "rate"


async def test_a_call_refused_for_another_limit_takes_no_spacing_turn(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=10, rate_burst_calls=1, max_concurrent_calls=1)
    in_flight = await take(limiter)
    clock.advance(30)
    assert (await refused(limiter)).reason == "concurrency"
    await limiter.release(in_flight)
    await take(limiter)  # the refused ask did not push the next turn out


async def test_a_refused_call_takes_nothing(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(rate_limit_calls=10, max_concurrent_calls=2, daily_quota=50)
    await take(limiter)
    await take(limiter)
    for _ in range(5):
        assert (await refused(limiter)).reason == "concurrency"
    state = await limiter.state()
    assert (state.calls_in_window, state.slots_in_use, state.quota_used_today) == (2, 2, 2)


# --- concurrency slots ----------------------------------------------------------------


async def test_k_slots_then_a_short_positive_wait(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(max_concurrent_calls=3)
    for holder in ("a", "b", "c"):
        await take(limiter, holder)
    denied = await refused(limiter, "d")
    assert denied.reason == "concurrency"
    assert denied.retry_after_s == CONCURRENCY_RETRY_S


async def test_release_frees_the_slot_but_the_call_still_counts(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(max_concurrent_calls=1)
    permit = await take(limiter)
    await refused(limiter)
    await limiter.release(permit)
    await take(limiter)
    state = await limiter.state()
    assert (state.calls_in_window, state.slots_in_use, state.quota_used_today) == (2, 1, 2)


async def test_a_turn_given_back_unused_frees_its_window_entry_quota_count_and_slot(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=2, max_concurrent_calls=1, daily_quota=5)
    sent = await take(limiter, "sent")
    await limiter.release(sent)
    unused = await take(limiter, "waited")
    await refused(limiter, "next")  # the window is full: 2 in it
    await limiter.give_back(unused)
    state = await limiter.state()
    assert (state.calls_in_window, state.slots_in_use, state.quota_used_today) == (1, 0, 1)
    await take(limiter, "next")
    await limiter.give_back(sent)  # released: its call was made, nothing to give back
    state = await limiter.state()
    assert (state.calls_in_window, state.quota_used_today) == (2, 2)


async def test_a_turn_given_back_after_marketos_quota_fault_leaves_the_day_spent(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(daily_quota=10)
    unused = await take(limiter)
    await limiter.pause_until_quota_reset()
    await limiter.give_back(unused)
    assert (await refused(limiter)).reason == "quota"


async def test_a_dead_holders_slot_frees_itself_after_its_expiry(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(max_concurrent_calls=1, request_timeout_s=30)
    await take(limiter, "dies")  # never released
    clock.advance(30 + SLOT_MARGIN_S - 0.01)
    assert (await refused(limiter, "waits")).reason == "concurrency"
    clock.advance(0.01)
    await take(limiter, "waits")


# --- daily quota ----------------------------------------------------------------------


async def test_the_daily_quota_counts_denies_and_resets_at_midnight_in_chicago(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    clock.now_s = unix("2026-11-28T23:59:00")
    limiter = make_limiter(daily_quota=3)
    for _ in range(3):
        await limiter.release(await take(limiter))
    denied = await refused(limiter)
    assert denied.reason == "quota"
    assert denied.retry_after_s == pytest.approx(60)
    assert (await limiter.state()).quota_used_today == 3
    clock.now_s = unix("2026-11-29T00:00:00")
    await take(limiter)
    assert (await limiter.state()).quota_used_today == 1


async def test_marketos_quota_fault_pauses_every_pod_until_the_reset(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    clock.now_s = unix("2026-11-28T18:00:00")
    pod_a, pod_b = make_limiter(daily_quota=10_000), make_limiter(daily_quota=10_000)
    await take(pod_a)
    await pod_a.pause_until_quota_reset()
    denied = await refused(pod_b)
    assert denied.reason == "quota"
    assert denied.retry_after_s == pytest.approx(6 * 3600)
    state = await pod_b.state()
    assert state.quota_used_today == state.quota_limit == 10_000
    clock.now_s = unix("2026-11-29T00:00:01")
    await take(pod_b)


# --- cooldown -------------------------------------------------------------------------


async def test_a_cooldown_is_honoured_by_every_pod_and_never_shortened(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    pod_a, pod_b = make_limiter(), make_limiter()
    await pod_a.cooldown(20, "20023 rate limit")
    await pod_b.cooldown(5, "20024 concurrency")
    denied = await refused(pod_b)
    assert denied.reason == "cooldown"
    assert denied.retry_after_s == pytest.approx(20)
    clock.advance(15)
    await pod_b.cooldown(10, "20024 concurrency")  # ends later than the first: extends
    state = await pod_a.state()
    assert state.cooldown_remaining_s == pytest.approx(10)
    assert state.cooldown_reason == "20024 concurrency"
    clock.advance(10)
    await take(pod_a)
    assert (await pod_a.state()).cooldown_reason is None


# --- hold and probe -------------------------------------------------------------------


async def test_hold_blocks_everything_but_one_probe_per_interval_cluster_wide(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    pods = [make_limiter(hold_probe_interval_s=60) for _ in range(4)]
    await pods[0].hold("20014 authentication failed")
    denied = await refused(pods[1], probe=True)
    assert denied.reason == "hold"
    assert denied.retry_after_s == pytest.approx(60)
    clock.advance(30)
    await pods[1].hold("20014 again")  # a repeated failure does not move the probe closer
    assert (await refused(pods[2], probe=True)).retry_after_s == pytest.approx(30)
    clock.advance(30)

    for _ in range(3):  # three intervals, one probe each, out of 100 eager callers
        calls = [pods[i % 4].acquire(f"pod-{i}", probe=True) for i in range(100)]
        probes = await grants(calls)
        assert [permit.probe for permit in probes] == [True]
        assert (await refused(pods[3], probe=True)).retry_after_s == pytest.approx(60)
        assert (await refused(pods[3])).reason == "hold"
        clock.advance(60)

    state = await pods[0].state()
    assert state.hold_reason == "20014 again"
    assert state.hold_since == pytest.approx(T0)
    await pods[0].clear_hold()
    after = await grants([pods[1].acquire("x", probe=True) for _ in range(5)])
    assert [permit.probe for permit in after] == [False] * 5
    assert (await pods[0].state()).hold_reason is None


async def test_a_probe_that_meets_another_limit_keeps_its_turn(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(hold_probe_interval_s=60)
    await limiter.hold("20014")
    await limiter.cooldown(90, "20023")
    clock.advance(60)
    assert (await refused(limiter, probe=True)).reason == "cooldown"
    clock.advance(30)
    await take(limiter, probe=True)


async def test_a_probe_without_hold_is_an_ordinary_call(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    await take(limiter, probe=True)
    await take(limiter, probe=True)


# --- many acquirers -------------------------------------------------------------------


async def test_many_tasks_never_get_more_than_the_limits(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=7, max_concurrent_calls=1000, daily_quota=100)
    assert len(await grants([limiter.acquire(f"t{i}") for i in range(100)])) == 7
    clock.advance(3600)  # window slid, slots expired, same quota day
    limiter = make_limiter(rate_limit_calls=1000, max_concurrent_calls=4, daily_quota=100)
    assert len(await grants([limiter.acquire(f"t{i}") for i in range(100)])) == 4
    clock.advance(3600)
    limiter = make_limiter(rate_limit_calls=1000, max_concurrent_calls=1000, daily_quota=20)
    assert len(await grants([limiter.acquire(f"t{i}") for i in range(100)])) == 20 - 7 - 4


PROCESS_LIMITS: dict[str, Any] = {
    "rate_limit_calls": 30,
    "rate_limit_window_s": 60,  # nothing slides out during the test
    "rate_burst_calls": 30,  # the whole window at once: the sliding log is the bound here
    "max_concurrent_calls": 3,
    "daily_quota": 100_000,
}


def _hammer(redis_url: str, process: int) -> tuple[int, int]:
    """Run in a separate process: 10 tasks take, hold briefly and release permits with the
    real clock until the rate window is full. Returns (grants, highest in-flight seen)."""
    return asyncio.run(_hammer_async(redis_url, process))


async def _hammer_async(redis_url: str, process: int) -> tuple[int, int]:
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(redis_url)
    limiter = RedisLimiter(client, Settings(**PROCESS_LIMITS))
    granted, highest = 0, 0

    async def task(name: str) -> None:
        nonlocal granted, highest
        while True:
            result = await limiter.acquire(name)
            if isinstance(result, Denied):
                if result.reason == "rate":
                    return
                await asyncio.sleep(0.002)
                continue
            granted += 1
            highest = max(highest, await client.incr("test:in-flight"))
            await asyncio.sleep(0.01)
            await client.decr("test:in-flight")
            await limiter.release(result)

    try:
        await asyncio.gather(*(task(f"p{process}-t{i}") for i in range(10)))
    finally:
        await client.aclose()
    return granted, highest


def test_three_processes_together_never_exceed_the_rate_or_the_slots(redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        results = pool.starmap(_hammer, [(redis_url, p) for p in range(3)])
    assert sum(granted for granted, _ in results) == PROCESS_LIMITS["rate_limit_calls"]
    assert max(highest for _, highest in results) <= PROCESS_LIMITS["max_concurrent_calls"]


async def test_a_client_that_decodes_responses_works_the_same(
    redis_url: str, clock: FakeClock
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    limiter = RedisLimiter(client, Settings.from_env(rate_limit_calls=1), clock=clock)
    try:
        await take(limiter)
        assert (await refused(limiter)).reason == "rate"
        await limiter.cooldown(5, "20023")
        await limiter.hold("20014")
        state = await limiter.state()
        assert (state.cooldown_reason, state.hold_reason) == ("20023", "20014")
    finally:
        await client.aclose()


async def test_pods_with_skewed_clocks_share_one_cooldown_window_and_slot_set(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every decision takes Redis's TIME: a pod 25 s fast still sees another pod's 20 s
    cooldown, and a pod 70 s fast does not free the slots of calls still in flight."""
    import time as real_time

    settings = Settings(rate_limit_calls=1000, rate_burst_calls=1000, max_concurrent_calls=1)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        limiter = RedisLimiter(client, settings)  # no injected clock: Redis TIME
        in_flight = await take(limiter, "correct-pod")
        now = real_time.time()
        monkeypatch.setattr("worker.limits.redis.time.time", lambda: now + 70.0)
        assert (await refused(limiter, "fast-pod")).reason == "concurrency"
        await limiter.release(in_flight)
        await limiter.cooldown(20.0, "20023 ThrottledError")
        monkeypatch.setattr("worker.limits.redis.time.time", lambda: now + 25.0)
        denied = await refused(limiter, "fast-pod")
        assert denied.reason == "cooldown"
        assert 15 < denied.retry_after_s <= 20
    finally:
        await client.aclose()


async def test_partial_batches_wait_for_the_pace_line_and_full_ones_do_not(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """At noon of a 1,000-call day, 500 calls (plus a burst of 2) are allowed to partial
    batches; the next waits one pace interval. Full batches go on regardless."""
    limiter = make_limiter(daily_quota=1000, pace_burst_calls=2)
    for _ in range(502):
        await take(limiter)  # full batches: not paced
    denied = await limiter.acquire("pod-a", paced=True)
    assert isinstance(denied, Denied)
    assert denied.reason == "pace"
    state = await limiter.state()
    assert state.pace_wait_s == pytest.approx(denied.retry_after_s, abs=0.01)
    clock.advance(denied.retry_after_s + 0.01)
    await take(limiter, paced=True)
    await take(limiter)  # a full batch still goes


# --- the wire: a quota fault after midnight, a call still running in Marketo -----------


async def test_a_quota_fault_answered_after_midnight_marks_the_day_of_its_call(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """F12: a call granted at 23:59:59.8 whose 20015 is handled at 00:00:00.3 spent the
    old day; the new day must not be blocked for 24 h."""
    clock.now_s = unix("2026-11-28T23:59:59") + 0.8
    limiter = make_limiter(daily_quota=10_000)
    permit = await take(limiter)
    clock.now_s = unix("2026-11-29T00:00:00") + 0.3
    await limiter.pause_until_quota_reset(permit)
    await limiter.release(await take(limiter))
    assert (await limiter.state()).quota_used_today == 1


async def test_a_call_whose_outcome_is_unknown_keeps_its_slot_until_marketo_is_done(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Marketo counts a timed-out call until it ends: its slot is kept, not released."""
    limiter = make_limiter(max_concurrent_calls=1, request_timeout_s=10)
    permit = await take(limiter, "timed-out")
    await limiter.keep_slot(permit, 120)
    clock.advance(119.9)
    assert (await refused(limiter, "next")).reason == "concurrency"
    clock.advance(0.2)
    await take(limiter, "next")


async def test_a_call_counts_in_the_window_from_when_it_leaves_not_from_its_grant(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Marketo counts a call when it arrives. A call held up after its grant (a loaded
    event loop, a large body to sign) counted from its grant let a call granted one
    window later arrive within Marketo's window of it (bench backfill: 101 in 20 s)."""
    limiter = make_limiter(rate_limit_calls=1, rate_burst_calls=1, rate_limit_window_s=10.0)
    late = await take(limiter)
    clock.advance(1.0)
    await limiter.depart(late)  # it leaves a second after its grant
    await limiter.release(late)
    clock.advance(9.3)  # a window (and its margin) after the grant, not after it left
    denied = await refused(limiter)
    assert denied.reason == "rate"
    assert denied.retry_after_s == pytest.approx(1.0 + 10.0 + WINDOW_MARGIN_S - 10.3)
    clock.advance(denied.retry_after_s)
    await take(limiter)


async def test_a_turn_given_back_is_not_put_back_by_its_departure(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter(rate_limit_calls=1, rate_burst_calls=1, rate_limit_window_s=10.0)
    turn = await take(limiter)
    await limiter.give_back(turn)
    await limiter.depart(turn)
    assert await limiter._redis.zcard(limiter.keys.window) == 0


# --- the bulk lane's budget ------------------------------------------------------------


async def test_bulk_calls_follow_their_own_pace_line_and_never_touch_the_share(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """At noon of a day with a 1,000-call bulk budget, 500 bulk calls plus its burst (a
    50th: 20) may have gone; the next waits for the line, while live calls go on and the
    live share's count stays untouched."""
    limiter = make_limiter(bulk_daily_calls=1000, daily_quota=10)
    granted = 0
    while isinstance(permit := await limiter.acquire("pod-a", bulk=True), Permit):
        assert permit.bulk
        granted += 1
    assert permit.reason == "bulk_pace"
    assert granted == 520
    state = await limiter.state()
    assert (state.quota_used_today, state.bulk_used_today) == (0, 520)
    assert state.bulk_pace_wait_s == pytest.approx(permit.retry_after_s, abs=0.01)
    await take(limiter)  # a live call is not held by the bulk line
    clock.advance(permit.retry_after_s + 0.01)
    assert isinstance(await limiter.acquire("pod-a", bulk=True), Permit)


async def test_a_quota_fault_heard_by_either_lane_stops_both(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    """Marketo's 20015 is the instance's quota: after a bulk call hears it, neither a live
    nor a bulk call goes until the reset (and the other way round)."""
    for lane_first in (True, False):
        limiter = make_limiter(bulk_daily_calls=1000, key_prefix=f"q{lane_first}")
        permit = await limiter.acquire("pod-a", bulk=lane_first)
        assert isinstance(permit, Permit)
        await limiter.pause_until_quota_reset(permit)
        live, bulk = await limiter.acquire("pod-a"), await limiter.acquire("pod-a", bulk=True)
        assert isinstance(live, Denied), live
        assert isinstance(bulk, Denied), bulk
        assert (live.reason, bulk.reason) == ("quota", "bulk_budget")
