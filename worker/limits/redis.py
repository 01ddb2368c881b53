"""Marketo limits shared by every worker pod, kept atomically in Redis.

One Lua step (``scripts/acquire.lua``) decides whether a call may go out now: a recent
master change (``worker.failover``) > hold >
cooldown > daily quota > quota pace > sliding-window rate > even spacing (GCRA) >
concurrency slot. When every check passes it takes a window entry, a quota count, a
spacing turn and a slot together, so a refused call never leaves a half-taken permit behind, and no two pods can both take the last unit of anything.

Every decision takes its time from Redis (``TIME`` inside the scripts), so pods with
skewed clocks still share one window, one cooldown and one set of slots; tests may
inject a clock instead. The quota DAY's key is named before the step runs, from the pod's
clock corrected by the offset to Redis's clock that the last step reported, and a 20015
marks the day its call was granted in (never the next one).
A slot carries an expiry (``request_timeout_s`` + :data:`SLOT_MARGIN_S`), so a pod that
dies mid-call frees its slot by itself.

The limits share the hash tag ``{limits}`` (a leftover of a Cluster plan: leadsync runs on
one Redis master, with Sentinel for failover).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis.asyncio

from producers.contract import LimiterKeys, text
from worker.errors import ConfigError
from worker.failover import GUARD_LUA
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
from worker.settings import Settings

logger = logging.getLogger(__name__)

# --- the scripts (one per step in scripts/) ------------------------------------------


_SCRIPT_DIR = resources.files("worker.limits").joinpath("scripts")


def _script(name: str) -> str:
    """One limiter step, with ``now.lua`` in front."""
    now = _SCRIPT_DIR.joinpath("now.lua").read_text(encoding="utf-8")
    return now + _SCRIPT_DIR.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else text(value)


def _number(value: bytes | str | None) -> float | None:
    text = _text(value)
    return float(text) if text is not None else None


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisLimiter:
    """Cluster-wide rate window, concurrency slots, daily quota, cooldown and hold."""

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        settings: Settings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        try:
            ZoneInfo(settings.quota_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError("LEADSYNC_QUOTA_TIMEZONE: unknown time zone") from None
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._keys = LimiterKeys(settings.key_prefix)
        #: Redis's clock minus this pod's, as the last admission step reported it.
        self._offset_s = 0.0
        self._slot_ttl_s = settings.request_timeout_s + SLOT_MARGIN_S
        self._acquire = redis.register_script(GUARD_LUA + _script("acquire"))
        self._cooldown = redis.register_script(_script("cooldown"))
        self._quota_exhausted = redis.register_script(_script("quota_exhausted"))
        self._hold = redis.register_script(_script("hold"))
        self._keep_slot = redis.register_script(_script("keep_slot"))
        self._depart = redis.register_script(_script("depart"))
        self._give_back = redis.register_script(
            _SCRIPT_DIR.joinpath("give_back.lua").read_text(encoding="utf-8")
        )

    @property
    def keys(self) -> LimiterKeys:
        return self._keys

    def _quota_key(self, now_s: float) -> str:
        return self._keys.quota(quota_day(now_s, self._settings.quota_timezone))

    def _bulk_key(self, now_s: float) -> str:
        return self._keys.bulk_quota(quota_day(now_s, self._settings.quota_timezone))

    @property
    def _bulk_burst(self) -> int:
        """Bulk calls that may go at once at the start of a quota day: a 50th of its budget
        (at least one), so the budget is spread over the day."""
        return min(self._settings.pace_burst_calls, max(1, self._settings.bulk_budget_calls // 50))

    def _reset_in_s(self, now_s: float) -> float:
        return next_quota_reset(now_s, self._settings.quota_timezone) - now_s

    def _local_now(self) -> float:
        """The injected clock, else this pod's moved onto Redis's: for naming the quota day."""
        return self._clock() if self._clock is not None else time.time() + self._offset_s

    def _learn_offset(self, redis_now: bytes | str | None, asked_at_s: float) -> float:
        """Note Redis's clock against this pod's; return Redis's time of the step."""
        if self._clock is not None or redis_now is None:
            return asked_at_s
        now_s = float(text(redis_now))
        self._offset_s = now_s - time.time()
        return now_s

    def _now_arg(self) -> str:
        """``now`` for a script: the injected clock, or '' for Redis TIME."""
        return repr(self._clock()) if self._clock is not None else ""

    async def _now(self) -> float:
        """The injected clock, else Redis's (for snapshots computed outside Lua)."""
        if self._clock is not None:
            return self._clock()
        seconds, micros = await self._redis.time()
        return float(seconds) + micros / 1_000_000

    @staticmethod
    def _slot_member(holder: str, token: str) -> str:
        return f"{holder}|{token}"

    async def acquire(
        self, holder: str, *, probe: bool = False, paced: bool = False, bulk: bool = False
    ) -> Permit | Denied:
        """Take leave for one call, or say why not and for how long.

        While on hold only ``probe=True`` callers can pass, and only one per
        ``hold_probe_interval_s`` across the cluster. ``paced=True`` (a partial batch)
        also waits for the pace line (:func:`pace_wait_s`). A ``bulk`` call counts in the
        bulk lane's own budget (LEADSYNC_BULK_DAILY_CALLS), always paced, so the budget
        is spread over the day; the window, spacing and slots are the live calls' own.
        """
        s = self._settings
        local_now = self._local_now()
        token = secrets.token_hex(8)
        keys = self._keys
        if bulk and s.bulk_budget_calls <= 0:
            return Denied("bulk_budget", self._reset_in_s(local_now))
        quota_key = self._bulk_key(local_now) if bulk else self._quota_key(local_now)
        result = await self._acquire(
            keys=[
                keys.window,
                keys.slots,
                quota_key,
                keys.cooldown,
                keys.hold,
                keys.spacing,
                keys.failover,
            ],
            args=[
                self._now_arg(),
                token,
                self._slot_member(holder, token),
                1 if probe else 0,
                s.rate_limit_calls,
                repr(s.rate_limit_window_s + WINDOW_MARGIN_S),
                s.max_concurrent_calls,
                repr(self._slot_ttl_s),
                s.bulk_budget_calls if bulk else s.daily_quota,
                repr(next_quota_reset(local_now, s.quota_timezone)),
                repr(s.hold_probe_interval_s),
                repr(CONCURRENCY_RETRY_S),
                repr(MIN_RETRY_S),
                repr(GC_MARGIN_S),
                1 if paced or bulk else 0,
                repr(quota_day_length_s(local_now, s.quota_timezone)),
                self._bulk_burst if bulk else s.pace_burst_calls,
                s.rate_burst_calls,
                repr(s.rate_limit_window_s + WINDOW_MARGIN_S),
            ],
        )
        granted_at_s = self._learn_offset(result[-1] if len(result) > 2 else None, local_now)
        if int(result[0]) == 1:
            return Permit(
                holder=holder,
                token=token,
                acquired_at=granted_at_s,
                probe=bool(int(result[1])),
                quota_key=quota_key,
                bulk=bulk,
            )
        reason = cast(DenyReason, _text(result[1]))
        if bulk and reason in ("quota", "pace"):
            reason = "bulk_budget" if reason == "quota" else "bulk_pace"
        return Denied(reason=reason, retry_after_s=max(float(_text(result[2]) or 0), MIN_RETRY_S))

    async def depart(self, permit: Permit) -> None:
        """The permit's call leaves now: its window entry takes this time (on Redis's
        clock), so the window counts calls when they leave, as Marketo does when they
        arrive, not when they were granted (``scripts/depart.lua``)."""
        await self._depart(keys=[self._keys.window], args=[self._now_arg(), permit.token])

    async def release(self, permit: Permit) -> None:
        """Free the slot. The window entry and quota count stay: the call was made."""
        await self._redis.zrem(self._keys.slots, self._slot_member(permit.holder, permit.token))

    async def keep_slot(self, permit: Permit, seconds: float) -> None:
        """The call's outcome is unknown and Marketo may still be running it: its slot
        stays taken for ``seconds`` more (instead of :meth:`release`), so leadsync never
        has more calls in Marketo than LEADSYNC_MAX_CONCURRENT_CALLS."""
        await self._keep_slot(
            keys=[self._keys.slots],
            args=[
                self._now_arg(),
                self._slot_member(permit.holder, permit.token),
                repr(seconds),
                repr(GC_MARGIN_S),
            ],
        )

    async def give_back(self, permit: Permit) -> None:
        """Free a turn whose call never left (slot, window entry, quota count); a turn
        already released is left as it is."""
        await self._give_back(
            keys=[
                self._keys.window,
                self._keys.slots,
                permit.quota_key or self._quota_key(permit.acquired_at),
            ],
            args=[
                permit.token,
                self._slot_member(permit.holder, permit.token),
                self._settings.bulk_budget_calls if permit.bulk else self._settings.daily_quota,
            ],
        )

    async def cooldown(self, seconds: float, reason: str) -> None:
        """Stop every pod from calling for ``seconds``; a longer cooldown already set stays."""
        extended = await self._cooldown(
            keys=[self._keys.cooldown],
            args=[self._now_arg(), repr(seconds), reason, repr(GC_MARGIN_S)],
        )
        if int(extended):
            logger.warning("limiter cooldown for %.1f s (%s)", seconds, reason)

    async def pause_until_quota_reset(self, permit: Permit | None = None) -> None:
        """Marketo says the daily quota is spent (20015): no call until the next reset.

        The quota is shared with other integrations, so Marketo's word beats our count:
        the day's counters (the live share's and the bulk lane's) are raised to their
        limits and expire after the day. The day is
        the one ``permit`` (the refused call's) was granted in: an answer that arrives just
        after midnight does not block the new day.
        """
        now = self._local_now()
        granted_s = permit.acquired_at if permit is not None else now
        reset_in_s = max(self._reset_in_s(granted_s) - (now - granted_s), 0.0)
        # The instance's quota is spent, whichever lane's call heard it: both lanes'
        # counters of the call's day go to their limits.
        live_key, bulk_key = self._quota_key(granted_s), self._bulk_key(granted_s)
        if permit is not None and permit.quota_key:  # the day the call was counted in
            live_key, bulk_key = (
                (live_key, permit.quota_key) if permit.bulk else (permit.quota_key, bulk_key)
            )
        for key, limit in (
            (live_key, self._settings.daily_quota),
            (bulk_key, self._settings.bulk_budget_calls),
        ):
            await self._quota_exhausted(
                keys=[key], args=[self._now_arg(), limit, _ms(reset_in_s + GC_MARGIN_S)]
            )
        logger.warning("daily quota spent; calls resume in %.0f s", reset_in_s)

    async def hold(self, reason: str) -> None:
        """Stop sending (bad credentials, access revoked) until :meth:`clear_hold`.

        The first hold sets ``since`` and the first probe time; holding again only
        updates the reason, so repeated failures never bring the next probe closer.
        """
        created = await self._hold(
            keys=[self._keys.hold],
            args=[self._now_arg(), repr(self._settings.hold_probe_interval_s), reason],
        )
        if int(created):
            logger.error(
                "limiter hold: nothing is sent but one probe per %.0f s (%s)",
                self._settings.hold_probe_interval_s,
                reason,
            )

    async def clear_hold(self) -> None:
        """Resume sending (a probe went through, or an operator fixed the configuration)."""
        if await self._redis.delete(self._keys.hold):
            logger.warning("limiter hold cleared")

    async def state(self) -> LimiterState:
        """A snapshot of the shared limits, read in one transaction."""
        s = self._settings
        now = await self._now()
        keys = self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zcount(keys.window, f"({now - s.rate_limit_window_s!r}", "+inf")
            pipe.zcount(keys.slots, f"({now!r}", "+inf")
            pipe.get(self._quota_key(now))
            pipe.hmget(keys.cooldown, ["until", "reason"])
            pipe.hmget(keys.hold, ["reason", "since", "next_probe"])
            pipe.get(self._bulk_key(now))
            calls, slots, used, cooldown, hold, bulk_used = await pipe.execute()
        cooldown_until = _number(cooldown[0])
        cooldown_left_s = max(cooldown_until - now, 0.0) if cooldown_until is not None else 0.0
        hold_reason, hold_since, next_probe = _text(hold[0]), _number(hold[1]), _number(hold[2])
        return LimiterState(
            calls_in_window=int(calls),
            slots_in_use=int(slots),
            quota_used_today=int(used or 0),
            quota_limit=s.daily_quota,
            pace_wait_s=pace_wait_s(
                int(used or 0),
                now,
                quota=s.daily_quota,
                reset_at_s=next_quota_reset(now, s.quota_timezone),
                day_length_s=quota_day_length_s(now, s.quota_timezone),
                burst=s.pace_burst_calls,
            ),
            cooldown_remaining_s=cooldown_left_s,
            cooldown_reason=_text(cooldown[1]) if cooldown_left_s > 0 else None,
            hold_reason=hold_reason,
            hold_since=hold_since,
            next_probe_in_s=max(next_probe - now, 0.0) if next_probe is not None else None,
            bulk_used_today=int(bulk_used or 0),
            bulk_limit=s.bulk_budget_calls,
            bulk_pace_wait_s=pace_wait_s(
                int(bulk_used or 0),
                now,
                quota=max(s.bulk_budget_calls, 1),
                reset_at_s=next_quota_reset(now, s.quota_timezone),
                day_length_s=quota_day_length_s(now, s.quota_timezone),
                burst=self._bulk_burst,
            ),
        )
