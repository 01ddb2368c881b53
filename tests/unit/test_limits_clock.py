"""The quota day and its reset: pure time-zone arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.limits import LimiterKeys, next_quota_reset, quota_day

CHICAGO = "America/Chicago"


def unix(text: str, tz: str = CHICAGO) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_reset_is_the_next_midnight_in_chicago() -> None:
    # 2026-11-28 is in standard time (CST, UTC-6).
    assert next_quota_reset(unix("2026-11-28T15:30:00"), CHICAGO) == utc("2026-11-29T06:00:00")


def test_the_reset_is_the_next_midnight_in_summer_time() -> None:
    # 2026-07-04 is in daylight time (CDT, UTC-5).
    assert next_quota_reset(unix("2026-07-04T23:59:59"), CHICAGO) == utc("2026-07-05T05:00:00")


def test_exactly_at_midnight_the_reset_is_a_day_away() -> None:
    midnight = unix("2026-11-28T00:00:00")
    assert next_quota_reset(midnight, CHICAGO) == midnight + 24 * 3600


def test_the_day_daylight_time_starts_is_23_hours_long() -> None:
    # US daylight time starts on 2026-03-08 at 02:00 local.
    start = unix("2026-03-08T00:00:00")
    assert next_quota_reset(start, CHICAGO) - start == 23 * 3600
    assert next_quota_reset(unix("2026-03-08T12:00:00"), CHICAGO) == utc("2026-03-09T05:00:00")


def test_the_day_daylight_time_ends_is_25_hours_long() -> None:
    # US daylight time ends on 2026-11-01 at 02:00 local (01:00-02:00 happens twice).
    start = unix("2026-11-01T00:00:00")
    assert next_quota_reset(start, CHICAGO) - start == 25 * 3600
    second_one_am = utc("2026-11-01T07:30:00")  # 01:30 CST, after the clocks went back
    assert next_quota_reset(second_one_am, CHICAGO) == utc("2026-11-02T06:00:00")


def test_a_midnight_skipped_by_daylight_time_resets_when_the_day_starts() -> None:
    # Chile moved its clocks from 2022-09-11 00:00 to 01:00: that midnight never happened.
    tz = "America/Santiago"
    reset = next_quota_reset(unix("2022-09-10T12:00:00", tz), tz)
    assert reset == utc("2022-09-11T04:00:00")
    assert quota_day(reset, tz) == "2022-09-11"
    assert quota_day(reset - 0.001, tz) == "2022-09-10"


def test_the_quota_day_is_the_date_in_the_quota_time_zone() -> None:
    # 03:00 UTC on the 29th is still the evening of the 28th in Chicago.
    assert quota_day(utc("2026-11-29T03:00:00"), CHICAGO) == "2026-11-28"
    assert quota_day(utc("2026-11-29T06:00:00"), CHICAGO) == "2026-11-29"


@given(st.floats(min_value=utc("2000-01-01T00:00:00"), max_value=utc("2100-01-01T00:00:00")))
def test_the_reset_starts_the_next_quota_day(now_s: float) -> None:
    reset = next_quota_reset(now_s, CHICAGO)
    assert now_s < reset <= now_s + 25 * 3600
    assert quota_day(reset, CHICAGO) != quota_day(now_s, CHICAGO)
    assert quota_day(reset - 0.001, CHICAGO) == quota_day(now_s, CHICAGO)


@pytest.mark.parametrize("name", ["window", "slots", "cooldown", "hold"])
def test_every_limiter_key_shares_one_hash_tag(name: str) -> None:
    keys = LimiterKeys("acme")
    assert getattr(keys, name) == f"acme:{{limits}}:{name}"
    assert keys.quota("2026-11-28") == "acme:{limits}:quota:2026-11-28"
