"""``leadsync stats``: backlog and oldest age per shard, the shared limits, the quota
pace and the outcomes of the last minute."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from worker.cli.common import age, console, run_with_redis, settings_from_env, when

if TYPE_CHECKING:
    from worker.obs.stats import StatsSnapshot
    from worker.settings import Settings

app = typer.Typer()


@app.command()
def stats(
    all_shards: bool = typer.Option(False, "--all", help="List shards with nothing in them too."),
) -> None:
    """Backlog and oldest age per shard, the shared limits and the outcomes of the last minute."""
    from worker.obs.stats import snapshot

    settings = settings_from_env()
    snap = run_with_redis(settings, lambda r: snapshot(r, settings))
    console.print(_limits_table(snap, settings))
    console.print(_shards_table(snap, all_shards))


def _limits_table(snap: StatsSnapshot, settings: Settings) -> Table:
    state = snap.limiter
    hold = "none"
    if state.hold_reason:
        since = f" since {when(state.hold_since)}" if state.hold_since else ""
        hold = f"[red]HELD[/] ({state.hold_reason}){since}"
    cooldown = "none"
    if state.cooldown_remaining_s > 0:
        cooldown = f"{state.cooldown_remaining_s:.1f} s left ({state.cooldown_reason})"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(snap.outcomes_last_minute.items()))
    table = Table(show_header=False, title="pipeline")
    for name, value in (
        (
            "backlog",
            f"{snap.backlog_total} entries, oldest {age(snap.oldest_age_s)}; done in "
            f"{_duration(snap.live_finish_in_s, never='after the quota reset')} at the rate limit",
        ),
        ("calls in flight", f"{state.slots_in_use} of {settings.max_concurrent_calls}"),
        (
            "calls in window",
            f"{state.calls_in_window} of {settings.rate_limit_calls} "
            f"per {settings.rate_limit_window_s:g} s",
        ),
        ("quota used today", f"{state.quota_used_today} of {state.quota_limit}"),
        ("quota pace", snap.pace.describe()),
        ("hold", hold),
        ("cooldown", cooldown),
        ("outcomes, last minute", outcomes or "none"),
        ("dead letters", str(sum(snap.dead_letters))),
        (
            "bulk lane",
            f"{snap.bulk_total} entries, oldest {age(snap.bulk_oldest_age_s)}; calls today "
            f"{state.bulk_used_today} of {state.bulk_limit}; done in "
            f"{_duration(snap.bulk_finish_in_s, never='never (no bulk budget)')} "
            "at the budget's pace",
        ),
    ):
        table.add_row(name, value)
    return table


def _duration(seconds: float | None, *, never: str) -> str:
    if seconds is None:
        return never
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _shards_table(snap: StatsSnapshot, all_shards: bool) -> Table:
    table = Table(title=f"shards ({snap.shards})")
    for column in ("shard", "backlog", "oldest", "leased", "dead letters"):
        table.add_column(column, justify="right")
    streams = (*snap.backlogs, *snap.bulk)
    for backlog, dead in zip(streams, snap.dead_letters[: len(streams)], strict=True):
        if all_shards or backlog.entries or dead or backlog.busy:
            bulk = backlog.shard >= snap.shards
            table.add_row(
                f"{backlog.shard - snap.shards} bulk" if bulk else str(backlog.shard),
                str(backlog.entries),
                age(backlog.oldest_age_s),
                "yes" if backlog.busy else "",
                str(dead),
            )
    return table
