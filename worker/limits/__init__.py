"""The limits Marketo sets, shared by every worker pod: rate window, even spacing,
concurrency slots, daily quota and its pace, cooldown and hold."""

from producers.contract import LimiterKeys
from worker.limits.base import (
    CONCURRENCY_RETRY_S,
    GC_MARGIN_S,
    MIN_RETRY_S,
    SLOT_MARGIN_S,
    WINDOW_MARGIN_S,
    Denied,
    DenyReason,
    LimiterState,
    Permit,
)
from worker.limits.quota_day import next_quota_reset, pace_wait_s, quota_day, quota_day_length_s
from worker.limits.redis import RedisLimiter

__all__ = [
    "CONCURRENCY_RETRY_S",
    "GC_MARGIN_S",
    "MIN_RETRY_S",
    "SLOT_MARGIN_S",
    "WINDOW_MARGIN_S",
    "Denied",
    "DenyReason",
    "LimiterKeys",
    "LimiterState",
    "Permit",
    "RedisLimiter",
    "next_quota_reset",
    "pace_wait_s",
    "quota_day",
    "quota_day_length_s",
]
