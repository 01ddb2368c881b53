"""The tick's decision and the quota pace, driven directly (pure functions)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.unit.test_limits_clock import unix
from worker.ledger import ShardBacklog
from worker.limits import LimiterState, pace_wait_s, quota_day_length_s
from worker.scheduling import bulk_drains, call_groups, due_shards, pace_report

IDLE = LimiterState(
    calls_in_window=0,
    slots_in_use=0,
    quota_used_today=0,
    quota_limit=10_000,
    pace_wait_s=0.0,
    cooldown_remaining_s=0.0,
    cooldown_reason=None,
    hold_reason=None,
    hold_since=None,
    next_probe_in_s=None,
)

BACKLOGS = [
    ShardBacklog(0, 300, 1.0, False),  # a full batch
    ShardBacklog(1, 5, 40.0, False),  # a partial batch past the flush interval
    ShardBacklog(2, 5, 3.0, False),  # a partial batch not due yet
    ShardBacklog(3, 900, 99.0, True),  # leased or resting
]


def due(state: LimiterState = IDLE) -> list[int]:
    return due_shards(BACKLOGS, state, batch_size=300, flush_interval_s=30.0)


def test_full_batches_and_partial_ones_past_the_flush_interval_are_due() -> None:
    assert due() == [0, 1]


def test_while_the_pace_holds_partial_batches_back_only_full_ones_are_rung() -> None:
    assert due(dataclasses.replace(IDLE, pace_wait_s=12.0)) == [0]


def test_nothing_is_due_in_a_cooldown_or_once_the_quota_is_used() -> None:
    assert due(dataclasses.replace(IDLE, cooldown_remaining_s=3.0)) == []
    assert due(dataclasses.replace(IDLE, quota_used_today=10_000)) == []


MIDNIGHT = unix("2026-12-01T00:00:00", "America/Chicago")
DAY_S = 86_400.0


def wait(used: int, now_s: float, burst: int = 100) -> float:
    return pace_wait_s(
        used, now_s, quota=10_000, reset_at_s=MIDNIGHT + DAY_S, day_length_s=DAY_S, burst=burst
    )


def test_the_pace_line_rises_evenly_from_the_burst_to_the_share_over_the_day() -> None:
    assert wait(99, MIDNIGHT) == 0.0, "the burst allowance goes at once"
    assert wait(100, MIDNIGHT) == pytest.approx(DAY_S / 10_000)
    noon = MIDNIGHT + DAY_S / 2
    assert wait(5_099, noon) == 0.0
    assert wait(5_100, noon) == pytest.approx(DAY_S / 10_000)
    assert wait(6_100, noon) == pytest.approx(1_001 * DAY_S / 10_000)


def test_a_steady_trickle_paced_by_the_line_never_spends_more_than_the_share() -> None:
    """Simulate partial batches asking every second all day: the calls made end at the
    share plus the burst, never more."""
    used, now = 0, MIDNIGHT
    while now < MIDNIGHT + DAY_S:
        if wait(used, now) == 0.0:
            used += 1
        now += 1.0
    assert 10_000 <= used <= 10_100


def test_quota_days_are_23_and_25_hours_long_around_dst_changes() -> None:
    assert (
        quota_day_length_s(unix("2026-03-08T12:00:00", "America/Chicago"), "America/Chicago")
        == 23 * 3600
    )
    assert (
        quota_day_length_s(unix("2026-11-01T12:00:00", "America/Chicago"), "America/Chicago")
        == 25 * 3600
    )
    assert quota_day_length_s(MIDNIGHT + 3600, "America/Chicago") == DAY_S


def test_the_pace_report_says_how_many_calls_the_inflow_needs_when_it_binds() -> None:
    held = dataclasses.replace(IDLE, pace_wait_s=40.0)
    report = pace_report(BACKLOGS, held, batch_size=300, flush_interval_s=30.0)
    assert report.short
    assert report.waiting_batches == 1  # shard 1; shard 3 is over a batch, shard 2 not due
    # 1,210 entries gathered over 99 s: 12.2 leads/s, one full call every 24.5 s
    assert report.calls_needed_per_day == math.ceil(86_400 * 1_210 / 99 / 300)
    assert "3,520 calls a day" in report.describe()
    assert "share is 10,000" in report.describe()
    assert not pace_report(BACKLOGS, IDLE, batch_size=300, flush_interval_s=30.0).short
    light = [ShardBacklog(0, 3, 40.0, False)]
    assert pace_report(light, held, batch_size=300, flush_interval_s=30.0).calls_needed_per_day == (
        2_880
    ), "light inflow needs one call per flush interval"


def groups(backlogs: list[ShardBacklog], state: LimiterState = IDLE) -> list[list[int]]:
    return call_groups(backlogs, state, batch_size=300, flush_interval_s=30.0)


def test_full_batches_drain_alone_and_the_rest_goes_in_full_calls_oldest_first() -> None:
    backlogs = [
        ShardBacklog(0, 700, 1.0, False),  # full: alone
        ShardBacklog(1, 120, 20.0, False),
        ShardBacklog(2, 200, 25.0, False),
        ShardBacklog(3, 90, 10.0, False),
        ShardBacklog(4, 5, 5.0, False),
    ]
    # 2 then 1 hold 320: a full call although none has waited 30 s; 3 and 4 (95) wait
    assert groups(backlogs) == [[0], [2, 1]]
    assert groups(backlogs, dataclasses.replace(IDLE, pace_wait_s=60.0)) == [[0], [2, 1]], (
        "full calls go whatever the pace"
    )
    assert groups([]) == []


def test_a_leftover_goes_only_once_its_oldest_entry_is_due_and_the_pace_allows() -> None:
    sixteen = [ShardBacklog(s, 2, 40.0 if s == 7 else 3.0, False) for s in range(16)]
    assert groups(sixteen) == [[7, *[s for s in range(16) if s != 7]]], "one call, not 16"
    assert groups(sixteen, dataclasses.replace(IDLE, pace_wait_s=5.0)) == []
    young = [ShardBacklog(s, 2, 29.0, False) for s in range(16)]
    assert groups(young) == [], "nothing due and no full call: wait"


def test_busy_shards_are_left_out_and_a_hold_rings_only_the_probe() -> None:
    backlogs = [
        ShardBacklog(0, 40, 31.0, False),  # due
        ShardBacklog(1, 30, 5.0, False),  # not due: rides
        ShardBacklog(3, 20, 1.0, True),  # busy
    ]
    assert groups(backlogs) == [[0, 1]]
    held = dataclasses.replace(IDLE, hold_reason="20014", next_probe_in_s=0.0)
    assert groups(backlogs, held) == [[0]]
    assert groups(backlogs, dataclasses.replace(held, next_probe_in_s=9.0)) == []
    assert groups(backlogs, dataclasses.replace(IDLE, cooldown_remaining_s=3.0)) == []


# --- the bulk lane -------------------------------------------------------------------------

BULK_READY = dataclasses.replace(IDLE, bulk_limit=2_000)
#: Two shards: 0 has a live entry waiting, 1 has none; both bulk streams hold entries.
LIVE_TWO = [ShardBacklog(0, 3, 1.0, False), ShardBacklog(1, 0, None, False)]
BULK_TWO = [ShardBacklog(2, 500, 900.0, False), ShardBacklog(3, 400, 60.0, False)]


def bulk(state: LimiterState = BULK_READY, **changes: object) -> list[list[int]]:
    live = changes.pop("live", LIVE_TWO)
    streams = changes.pop("bulk", BULK_TWO)
    return bulk_drains(live, streams, state, live_rung=bool(changes.pop("live_rung", False)))  # type: ignore[arg-type]


def test_bulk_drains_only_a_stream_whose_shard_has_no_live_entry_waiting() -> None:
    assert bulk() == [[3]], "shard 0's bulk waits for its live entry, though older"
    quiet = [ShardBacklog(0, 0, None, False), LIVE_TWO[1]]
    assert bulk(live=quiet) == [[2]], "then the oldest bulk entry goes first, one per tick"


@pytest.mark.parametrize(
    "state",
    [
        dataclasses.replace(BULK_READY, bulk_used_today=2_000),
        dataclasses.replace(BULK_READY, bulk_pace_wait_s=4.0),
        dataclasses.replace(BULK_READY, hold_reason="auth"),
        dataclasses.replace(BULK_READY, cooldown_remaining_s=3.0),
        dataclasses.replace(BULK_READY, bulk_limit=0),
    ],
    ids=["budget spent", "pace line", "hold", "cooldown", "no budget"],
)
def test_nothing_bulk_goes_when_its_budget_or_a_limit_says_no(state: LimiterState) -> None:
    assert bulk(state) == []


def test_no_bulk_drain_while_a_live_one_is_rung_or_its_shard_is_busy() -> None:
    assert bulk(live_rung=True) == []
    busy = [ShardBacklog(2, 500, 900.0, True), ShardBacklog(3, 400, 60.0, True)]
    assert bulk(bulk=busy) == []


def test_the_live_share_spent_does_not_stop_the_bulk_budget() -> None:
    """Two budgets: a 20015 exhausts both counters, a live share used up only its own."""
    assert bulk(dataclasses.replace(BULK_READY, quota_used_today=10_000)) == [[3]]
