"""What ``leadsync top`` shows: :func:`gather` reads one :class:`TopFrame` from Redis
(the ``leadsync stats`` snapshot plus how long each shard still rests and when the quota
day resets); :func:`render` turns a :class:`TopScreen` (the latest frame, and whether the
last read failed) into a rich renderable without any I/O, so the view is unit-tested from
a made-up frame.

Nothing here shows lead data: the frame holds counts, ages and the limiter's reasons, and
a reason is cut short with anything shaped like an email address masked. A Redis error
is named by its class only (its message may carry the URL, password included).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from producers.contract import Keys, text
from worker.limits import next_quota_reset
from worker.obs.stats import StatsSnapshot, snapshot

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.settings import Settings

#: A limiter reason longer than this is cut (they are codes and class names; this keeps a
#: surprise message from filling the screen).
REASON_MAX_CHARS = 60
_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"']+@[^\s@<>()\[\],;:\"']+")


@dataclass(frozen=True, slots=True)
class TopLimits:
    """The configured ceilings the live numbers are read against."""

    rate_limit_calls: int
    rate_limit_window_s: float
    max_concurrent_calls: int

    @classmethod
    def of(cls, settings: Settings) -> TopLimits:
        return cls(
            rate_limit_calls=settings.rate_limit_calls,
            rate_limit_window_s=settings.rate_limit_window_s,
            max_concurrent_calls=settings.max_concurrent_calls,
        )


@dataclass(frozen=True, slots=True)
class TopFrame:
    """One read of the pipeline. ``rest_left_s[s]`` is how long shard s still rests after
    faults (0 when it does not); a busy shard that does not rest is leased by a cycle."""

    stats: StatsSnapshot
    rest_left_s: tuple[float, ...]
    quota_reset_in_s: float
    limits: TopLimits


@dataclass(frozen=True, slots=True)
class TopScreen:
    """What one refresh shows: the latest frame read (None before the first one) and,
    when the last read failed, why and since when (the frame is then the last good one).
    ``interval_s`` is None for a single frame (``--once``)."""

    now_s: float
    interval_s: float | None
    key_prefix: str
    frame: TopFrame | None = None
    problem: str | None = None
    problem_since: float | None = None

    def with_frame(self, frame: TopFrame, now_s: float) -> TopScreen:
        return replace(self, now_s=now_s, frame=frame, problem=None, problem_since=None)

    def with_problem(self, problem: str, now_s: float) -> TopScreen:
        since = self.problem_since if self.problem is not None else now_s
        return replace(self, now_s=now_s, problem=problem, problem_since=since)


async def gather(redis: Redis, settings: Settings, now_s: float | None = None) -> TopFrame:
    """Read one frame; writes nothing. Raises what the Redis client raises."""
    now_s = time.time() if now_s is None else now_s
    stats = await snapshot(redis, settings, now_s)
    keys = Keys(settings.key_prefix)
    pipe = redis.pipeline(transaction=False)
    pipe.time()  # a rest is stored on Redis's clock
    for shard in range(stats.shards):
        pipe.get(keys.rest(shard))
    (seconds, micros), *rests = await pipe.execute()
    redis_now_s = float(seconds) + micros / 1_000_000
    return TopFrame(
        stats=stats,
        rest_left_s=tuple(
            max(float(text(until)) - redis_now_s, 0.0) if until is not None else 0.0
            for until in rests
        ),
        quota_reset_in_s=max(next_quota_reset(now_s, settings.quota_timezone) - now_s, 0.0),
        limits=TopLimits.of(settings),
    )


def render(screen: TopScreen, *, max_shard_rows: int | None = None) -> RenderableType:
    """The whole view: a title, the problem if any, the pipeline and the shards with
    something in them (at most ``max_shard_rows``, the largest backlogs, when given)."""
    parts: list[RenderableType] = [_title(screen)]
    if screen.problem is not None:
        parts.append(_problem(screen))
    if screen.frame is not None:
        parts.append(_pipeline_table(screen.frame))
        parts.append(_shards_table(screen.frame, max_shard_rows))
    return Group(*parts)


def clean_reason(reason: str | None) -> str:
    """A limiter reason fit for the screen: emails masked, cut to REASON_MAX_CHARS."""
    if not reason:
        return "-"
    masked = _EMAIL.sub("<email>", " ".join(reason.split()))
    if len(masked) > REASON_MAX_CHARS:
        masked = masked[: REASON_MAX_CHARS - 1] + "…"
    return masked


def duration(seconds: float) -> str:
    """A short span: 0.4 s, 42 s, 3.5 min, 2.1 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _title(screen: TopScreen) -> Text:
    shards = f" · {screen.frame.stats.shards} shards" if screen.frame else ""
    live = f" · every {screen.interval_s:g} s · Ctrl-C quits" if screen.interval_s else ""
    return Text.assemble(
        ("leadsync top", "bold"),
        f" · prefix {screen.key_prefix}{shards} · {clock(screen.now_s)}{live}",
    )


def _problem(screen: TopScreen) -> Text:
    since = clock(screen.problem_since) if screen.problem_since is not None else "now"
    shown = (
        f"figures below are from {clock(screen.frame.stats.taken_at)}"
        if screen.frame is not None
        else "no figures yet"
    )
    again = f"; trying again every {screen.interval_s:g} s" if screen.interval_s else ""
    return Text.assemble((screen.problem or "", "bold red"), f" since {since}{again}; {shown}")


def _pipeline_table(frame: TopFrame) -> Table:
    stats, state, limits = frame.stats, frame.stats.limiter, frame.limits
    table = Table(show_header=False, title="pipeline", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    with_work = sum(1 for b in stats.backlogs if b.entries)
    share = state.quota_limit
    used_pct = f" ({100 * state.quota_used_today / share:.1f} %)" if share else ""
    rows: list[tuple[str, Text | str]] = [
        (
            "backlog",
            f"{stats.backlog_total:,} entries in {with_work} of {stats.shards} shards, "
            f"oldest {_age(stats.oldest_age_s)}",
        ),
        (
            "calls in window",
            f"{state.calls_in_window} of {limits.rate_limit_calls} "
            f"per {limits.rate_limit_window_s:g} s",
        ),
        ("calls in flight", f"{state.slots_in_use} of {limits.max_concurrent_calls}"),
        (
            "calls today",
            f"{state.quota_used_today:,} of the share {share:,}{used_pct}, "
            f"resets in {duration(frame.quota_reset_in_s)}",
        ),
        ("pace", _pace(frame)),
        ("hold", _hold(frame)),
        ("cooldown", _cooldown(frame)),
        ("rests", _rests(frame)),
        ("outcomes / min", _outcomes(frame)),
        ("dead letters", f"{sum(stats.dead_letters):,}"),
        (
            "bulk lane",
            f"{stats.bulk_total:,} entries, oldest {_age(stats.bulk_oldest_age_s)}; calls "
            f"today {state.bulk_used_today:,} of {state.bulk_limit:,}",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _pace(frame: TopFrame) -> Text | str:
    pace = frame.stats.pace
    if pace.wait_s <= 0:
        return "no wait"
    held = f", {pace.waiting_batches} partial batches held" if pace.waiting_batches else ""
    style = "yellow" if pace.short else ""
    return Text(f"wait {duration(pace.wait_s)}{held}", style=style)


def _hold(frame: TopFrame) -> Text | str:
    state = frame.stats.limiter
    if not state.hold_reason:
        return "none"
    since = f" since {clock(state.hold_since)}" if state.hold_since else ""
    probe = (
        f", next probe in {duration(state.next_probe_in_s)}"
        if state.next_probe_in_s is not None
        else ""
    )
    return Text.assemble(
        ("HELD", "bold red"), f" ({clean_reason(state.hold_reason)}){since}{probe}"
    )


def _cooldown(frame: TopFrame) -> Text | str:
    state = frame.stats.limiter
    if state.cooldown_remaining_s <= 0:
        return "none"
    return Text(
        f"{duration(state.cooldown_remaining_s)} left ({clean_reason(state.cooldown_reason)})",
        style="yellow",
    )


def _rests(frame: TopFrame) -> Text | str:
    resting = [(s, left) for s, left in enumerate(frame.rest_left_s) if left > 0]
    if not resting:
        return "none"
    longest = duration(max(left for _, left in resting))
    if len(resting) == 1:
        return Text(f"shard {resting[0][0]}, {longest} left", style="yellow")
    names = ", ".join(str(s) for s, _ in resting[:8]) + (" …" if len(resting) > 8 else "")
    return Text(f"{len(resting)} shards ({names}), longest {longest} left", style="yellow")


def _outcomes(frame: TopFrame) -> str:
    counts = frame.stats.outcomes_last_minute
    if not any(counts.values()):
        return "none"
    total = sum(counts.values())
    parts = ", ".join(f"{status} {n:,}" for status, n in sorted(counts.items()) if n)
    return f"{total:,} ({parts})"


def _shards_table(frame: TopFrame, max_rows: int | None) -> Table | Text:
    stats = frame.stats
    lines = [
        (backlog, dead, rest)
        for backlog, dead, rest in zip(
            stats.backlogs, stats.dead_letters[: stats.shards], frame.rest_left_s, strict=True
        )
        if backlog.entries or dead or backlog.busy or rest > 0
    ]
    if not lines:
        return Text(f"all {stats.shards} shards empty and idle")
    shown = sorted(lines, key=lambda line: (-line[0].entries, line[0].shard))[
        : len(lines) if max_rows is None else max(max_rows, 1)
    ]
    shown.sort(key=lambda line: line[0].shard)
    hidden = len(lines) - len(shown)
    caption = f"{hidden} more shards with work (the largest backlogs are shown)" if hidden else None
    table = Table(title="shards", title_justify="left", caption=caption, caption_justify="left")
    for column in ("shard", "backlog", "oldest", "state", "dead letters"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for backlog, dead, rest in shown:
        if rest > 0:
            state = Text(f"rests {duration(rest)}", style="yellow")
        elif backlog.busy:
            state = Text("leased", style="green")
        else:
            state = Text("")
        table.add_row(
            str(backlog.shard), f"{backlog.entries:,}", _age(backlog.oldest_age_s), state, str(dead)
        )
    return table


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else duration(seconds)
