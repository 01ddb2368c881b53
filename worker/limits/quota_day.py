"""Quota-day arithmetic (pure): which day a moment falls in, when it resets, how long
it is around DST changes, and how long a partial batch waits for the quota pace."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo


def quota_day(now_s: float, tz: str) -> str:
    """The quota day ``now_s`` falls in, as 'YYYY-MM-DD' in ``tz``."""
    return datetime.fromtimestamp(now_s, ZoneInfo(tz)).date().isoformat()


def next_quota_reset(now_s: float, tz: str) -> float:
    """The next 00:00 in ``tz`` after ``now_s``, as Unix time (23 or 25 h days on DST changes)."""
    zone = ZoneInfo(tz)
    tomorrow = datetime.fromtimestamp(now_s, zone).date() + timedelta(days=1)
    # Wall-clock arithmetic on the date, then zoneinfo picks the offset valid at that
    # midnight; a midnight skipped by DST maps to the instant the day starts.
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone).timestamp()


def quota_day_length_s(now_s: float, tz: str) -> float:
    """Length of the quota day ``now_s`` falls in (23, 24 or 25 h around DST changes)."""
    zone = ZoneInfo(tz)
    today = datetime.fromtimestamp(now_s, zone).date()
    start = datetime(today.year, today.month, today.day, tzinfo=zone).timestamp()
    return next_quota_reset(now_s, tz) - start


def pace_wait_s(
    used: int, now_s: float, *, quota: int, reset_at_s: float, day_length_s: float, burst: int
) -> float:
    """How long a partial batch waits for the pace line (0: it may go now).

    The day's calls may reach ``burst`` at the day's start and rise evenly to ``quota +
    burst`` at the reset, so a steady trickle never spends the share before the day ends.
    The admission step in ``scripts/acquire.lua`` applies the same rule atomically.
    """
    day_start_s = reset_at_s - day_length_s
    allowed = quota * (now_s - day_start_s) / day_length_s + burst
    if used + 1 <= allowed:
        return 0.0
    return day_start_s + (used + 1 - burst) * day_length_s / quota - now_s
