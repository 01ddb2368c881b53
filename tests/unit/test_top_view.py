"""`leadsync top`: the view rendered from a made-up frame (no Redis), the screen's
problem state, and one frame gathered from an in-memory Redis."""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import fakeredis
import pytest
import redis.asyncio
from rich.console import Console

from producers.contract import Keys
from tests.unit.test_scheduling import IDLE
from worker.cli.top import refresh
from worker.ledger import ShardBacklog
from worker.limits import LimiterState
from worker.obs.stats import StatsSnapshot, count_outcomes
from worker.obs.top_view import (
    REASON_MAX_CHARS,
    TopFrame,
    TopLimits,
    TopScreen,
    clean_reason,
    gather,
    render,
)
from worker.scheduling import PaceReport
from worker.settings import Settings

NOW = 1_800_000_000.0
LIMITS = TopLimits(rate_limit_calls=50, rate_limit_window_s=20, max_concurrent_calls=5)


BUSY = dataclasses.replace(
    IDLE, calls_in_window=7, slots_in_use=2, quota_used_today=1234, quota_limit=5000
)


def state(**changes: Any) -> LimiterState:
    return dataclasses.replace(BUSY, **changes)


def frame(
    backlogs: list[ShardBacklog] | None = None,
    *,
    rests: tuple[float, ...] | None = None,
    limiter: LimiterState | None = None,
    outcomes: dict[str, int] | None = None,
    waiting_batches: int = 0,
    dead_in_shard_2: int = 4,
) -> TopFrame:
    backlogs = backlogs or [
        ShardBacklog(0, 0, None, False),
        ShardBacklog(1, 317, 42.0, True),
        ShardBacklog(2, 9, 3.5, False),
        ShardBacklog(3, 0, None, False),
    ]
    limiter = limiter or state()
    return TopFrame(
        stats=StatsSnapshot(
            taken_at=NOW,
            shards=len(backlogs),
            backlogs=tuple(backlogs),
            dead_letters=tuple(dead_in_shard_2 if b.shard == 2 else 0 for b in backlogs),
            limiter=limiter,
            outcomes_last_minute=outcomes if outcomes is not None else {"CREATED": 12, "FAILED": 1},
            pace=PaceReport(
                waiting_batches=waiting_batches,
                wait_s=limiter.pace_wait_s,
                calls_needed_per_day=9000,
                share_per_day=limiter.quota_limit,
            ),
        ),
        rest_left_s=rests if rests is not None else tuple(0.0 for _ in backlogs),
        quota_reset_in_s=5.5 * 3600,
        limits=LIMITS,
    )


def screen(top_frame: TopFrame | None = None, **changes: object) -> TopScreen:
    base = TopScreen(now_s=NOW, interval_s=1.0, key_prefix="leadsync", frame=top_frame)
    return TopScreen(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **changes})  # type: ignore[arg-type]


def shown(top_screen: TopScreen, *, max_shard_rows: int | None = None) -> str:
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(render(top_screen, max_shard_rows=max_shard_rows))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def value(out: str, name: str) -> str:
    """What the pipeline table says against ``name``."""
    (row,) = [line for line in out.splitlines() if line.startswith(f"│ {name} ")]
    return row.split("│")[2].strip()


def shard_row(out: str, shard: int) -> list[str]:
    """The cells of a shard's row: shard, backlog, oldest, state, dead letters."""
    (row,) = [line for line in out.splitlines() if line.startswith(f"│ {shard:>5} │")]
    return [cell.strip() for cell in row.split("│")[1:-1]]


def test_the_pipeline_figures_are_shown_against_their_ceilings() -> None:
    out = shown(screen(frame()))
    assert value(out, "backlog") == "326 entries in 2 of 4 shards, oldest 42 s"
    assert value(out, "calls in window") == "7 of 50 per 20 s"
    assert value(out, "calls in flight") == "2 of 5"
    assert value(out, "calls today") == "1,234 of the share 5,000 (24.7 %), resets in 5.5 h"
    assert value(out, "pace") == "no wait"
    assert value(out, "outcomes / min") == "13 (CREATED 12, FAILED 1)"
    assert value(out, "dead letters") == "4"
    assert "every 1 s · Ctrl-C quits" in out
    assert "4 shards" in out


def test_each_shard_with_work_has_a_row_and_idle_ones_do_not() -> None:
    out = shown(screen(frame(rests=(0.0, 0.0, 2.5, 0.0))))
    assert shard_row(out, 1) == ["1", "317", "42 s", "leased", "0"]
    assert shard_row(out, 2) == ["2", "9", "3.5 s", "rests 2.5 s", "4"]
    assert not [line for line in out.splitlines() if line.startswith("│     0 │")]
    assert value(out, "rests") == "shard 2, 2.5 s left"
    out = shown(screen(frame(rests=(0.0, 9.0, 2.5, 0.0))))
    assert value(out, "rests") == "2 shards (1, 2), longest 9.0 s left"


def test_an_empty_pipeline_says_so() -> None:
    empty = [ShardBacklog(s, 0, None, False) for s in range(8)]
    out = shown(screen(frame(empty, outcomes={}, dead_in_shard_2=0)))
    assert "all 8 shards empty and idle" in out
    assert value(out, "outcomes / min") == "none"
    assert value(out, "rests") == "none"
    assert value(out, "backlog") == "0 entries in 0 of 8 shards, oldest -"


def test_the_pace_hold_and_cooldown_are_named() -> None:
    limiter = state(
        pace_wait_s=12.0,
        hold_reason="20014 AuthError",
        hold_since=NOW - 60,
        next_probe_in_s=4.0,
        cooldown_remaining_s=3.25,
        cooldown_reason="615 ThrottledError",
    )
    out = shown(screen(frame(limiter=limiter, waiting_batches=3)))
    assert "wait 12 s, 3 partial batches held" in out
    assert "HELD (20014 AuthError) since" in out
    assert "next probe in 4.0 s" in out
    assert "3.2 s left (615 ThrottledError)" in out


def test_no_email_nor_markup_from_a_reason_reaches_the_screen() -> None:
    limiter = state(hold_reason="describe: [red]bad[/] for ann.lee+x@example.com", hold_since=NOW)
    out = shown(screen(frame(limiter=limiter)))
    assert "example.com" not in out
    assert "ann.lee" not in out
    assert "describe: [red]bad[/] for <email>" in out
    long = clean_reason("x" * 500)
    assert len(long) == REASON_MAX_CHARS
    assert long.endswith("…")
    assert clean_reason(None) == "-"


def test_only_the_largest_backlogs_fit_and_the_rest_are_counted() -> None:
    many = [ShardBacklog(s, 10 * s, 1.0, False) for s in range(1, 11)]
    out = shown(screen(frame(many)), max_shard_rows=3)
    assert [line.split("│")[1].strip() for line in out.splitlines() if "│" in line][-3:] == [
        "8",
        "9",
        "10",
    ]
    assert "7 more shards with work" in out


def test_a_failed_read_keeps_the_last_figures_and_says_since_when() -> None:
    good = screen().with_frame(frame(), NOW)
    failed = good.with_problem("Redis unavailable (ConnectionError)", NOW + 5)
    again = failed.with_problem("Redis unavailable (TimeoutError)", NOW + 9)
    assert again.problem_since == NOW + 5
    out = shown(again)
    assert "Redis unavailable (TimeoutError) since" in out
    assert "trying again every 1 s" in out
    assert "figures below are from" in out
    assert "7 of 50 per 20 s" in out
    recovered = again.with_frame(frame(), NOW + 10)
    assert recovered.problem is None
    assert recovered.problem_since is None
    assert "Redis unavailable" not in shown(recovered)


def test_before_the_first_read_there_are_no_figures() -> None:
    out = shown(screen(interval_s=None).with_problem("Redis unavailable (ConnectionError)", NOW))
    assert "no figures yet" in out
    assert "Ctrl-C" not in out
    assert "trying again" not in out


async def test_a_frame_is_gathered_with_rests_outcomes_and_backlogs() -> None:
    client = fakeredis.FakeAsyncRedis()
    keys = Keys()
    settings = Settings(shards=4)
    now_s = time.time()
    await client.xadd(keys.stream(2), {"d": "x"})
    await client.set(keys.rest(3), repr(now_s + 30))
    await client.set(keys.rest(1), repr(now_s - 30))  # over: the stored time decides
    await count_outcomes(client, keys, {"CREATED": 5}, now_s)
    top = await gather(client, settings, now_s)
    assert top.stats.backlogs[2].entries == 1
    assert top.rest_left_s[0] == 0.0
    assert top.rest_left_s[1] == 0.0
    assert 25 < top.rest_left_s[3] <= 30
    assert top.stats.outcomes_last_minute == {"CREATED": 5}
    assert 0 < top.quota_reset_in_s <= 25 * 3600
    assert top.limits.rate_limit_calls == settings.rate_limit_calls


@pytest.mark.timeout(10)
async def test_an_unreachable_redis_is_named_by_class_never_by_its_url() -> None:
    client = redis.asyncio.Redis.from_url("redis://:s3cret-pw@127.0.0.1:1/0")
    settings = Settings(redis_url="redis://:s3cret-pw@127.0.0.1:1/0")
    try:
        result = await refresh(client, settings, screen())
    finally:
        await client.aclose()
    assert result.problem == "Redis unavailable (ConnectionError)"
    assert "s3cret" not in shown(result)


def test_the_live_lane_finishes_at_the_rate_limit_or_after_the_quota_reset() -> None:
    stats = frame().stats  # 326 live entries: 2 full calls
    assert dataclasses.replace(stats, calls_per_s=2.5).live_finish_in_s == pytest.approx(0.8)
    spent = state(quota_used_today=4999, quota_limit=5000)  # 1 call left, 2 needed
    assert dataclasses.replace(stats, limiter=spent).live_finish_in_s is None
    empty = frame([ShardBacklog(0, 0, None, False)]).stats
    assert empty.live_finish_in_s == 0.0


def test_the_bulk_lane_has_its_line() -> None:
    stats = dataclasses.replace(
        frame().stats,
        bulk=(ShardBacklog(4, 1200, 95.0, False), ShardBacklog(5, 300, 12.0, False)),
        limiter=state(bulk_used_today=40, bulk_limit=2000),
    )
    text = shown(screen(dataclasses.replace(frame(), stats=stats)))
    assert "1,500 entries, oldest 95 s; calls today 40 of 2,000" in text
