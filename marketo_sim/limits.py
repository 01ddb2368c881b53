"""Marketo's per-instance limits: a sliding call window, calls in flight, a daily quota.

One instance's limits, shared by SOAP and REST calls (Marketo: "Capacity is shared by all API
services and users in an instance"). Calls refused by a limit (SOAP 20023, 20024, 20015; REST
606, 615, 607) do not count against the window or the quota; every other authenticated call
does, faults included, except REST's 604, 608 and 611, documented as not counted.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta, timezone

from marketo_sim.config import SimConfig
from marketo_sim.soap import SimFault


def quota_day(now_epoch_s: float, utc_offset_h: float) -> str:
    """The quota day of a moment: the date in a fixed zone (US Central Standard Time)."""
    zone = timezone(timedelta(hours=utc_offset_h))
    return datetime.fromtimestamp(now_epoch_s, zone).date().isoformat()


class Limits:
    """Admission control for one simulated instance. Not thread-safe: one event loop owns it."""

    def __init__(self) -> None:
        self.window: deque[float] = deque()
        self.in_flight = 0
        self.day = ""
        self.day_calls = 0

    def refusal(self, config: SimConfig, *, monotonic_s: float, epoch_s: float) -> str | None:
        """Which limit refuses a call now: "quota", "rate", "concurrency", or None."""
        cutoff = monotonic_s - config.rate_window_s
        while self.window and self.window[0] <= cutoff:
            self.window.popleft()
        day = quota_day(epoch_s, config.quota_reset_utc_offset_h)
        if day != self.day:
            self.day, self.day_calls = day, 0
        if self.day_calls >= config.daily_quota:
            return "quota"
        if len(self.window) >= config.rate_limit_calls:
            return "rate"
        if self.in_flight >= config.max_concurrent:
            return "concurrency"
        return None

    def count_in(self, monotonic_s: float) -> None:
        """Count an admitted call against the window and the quota, and hold a slot."""
        self.window.append(monotonic_s)
        self.day_calls += 1
        self.in_flight += 1

    def admit(self, config: SimConfig, *, monotonic_s: float, epoch_s: float) -> None:
        """Count a SOAP call in, or raise the limit fault that refuses it."""
        refusal = self.refusal(config, monotonic_s=monotonic_s, epoch_s=epoch_s)
        if refusal == "quota":
            raise SimFault(20015, "Request limit exceeded: daily quota reached")
        if refusal == "rate":
            raise SimFault(
                20023,
                f"Rate limit exceeded: more than {config.rate_limit_calls} calls "
                f"in {config.rate_window_s:g} seconds",
            )
        if refusal == "concurrency":
            raise SimFault(
                20024, f"Concurrency limit exceeded: {config.max_concurrent} calls in flight"
            )
        self.count_in(monotonic_s)

    def release(self) -> None:
        """The call that ``admit`` counted in has answered."""
        self.in_flight -= 1
