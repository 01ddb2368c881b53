"""Marketo limits shared by every worker pod, kept atomically in Redis.

One Lua step (``limits.lua``) decides whether a call may go out now: hold > cooldown >
daily quota > quota pace > sliding-window rate > even spacing (GCRA) > concurrency slot.
When every check passes it takes a window entry, a quota count, a spacing turn and a
slot together, so a refused call never leaves a
half-taken permit behind, and no two pods can both take the last unit of anything.

Every decision takes its time from Redis (``TIME`` inside the scripts), so pods with
skewed clocks still share one window, one cooldown and one set of slots; tests may
inject a clock instead. Only the quota DAY is named from the pod's clock (a skew moves
the day change by that skew, no more).
A slot carries an expiry (``request_timeout_s`` + :data:`SLOT_MARGIN_S`), so a pod that
dies mid-call frees its slot by itself.

All keys share the hash tag ``{limits}`` so the step also runs on Redis Cluster.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Literal, TypeAlias, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis.asyncio

from worker.errors import ConfigError
from worker.settings import Settings

logger = logging.getLogger(__name__)

DenyReason: TypeAlias = Literal["hold", "cooldown", "quota", "pace", "rate", "concurrency"]

#: Added to ``request_timeout_s`` for a slot's lifetime: the HTTP call is over by then.
SLOT_MARGIN_S = 5.0
#: Wait suggested when every slot is taken; a slot frees when some call returns.
CONCURRENCY_RETRY_S = 0.25
#: Smallest wait ever suggested, so a full-jitter backoff never retries at once.
MIN_RETRY_S = 0.01
#: Marketo counts calls as they arrive, not as we grant them: a call granted exactly one
#: window after an older one can arrive a few ms sooner than it and land inside Marketo's
#: window. Each grant waits out this margin too (clock skew between pods counts here).
WINDOW_MARGIN_S = 0.25
#: Keys outlive the state they hold by this much; TTLs only collect garbage.
GC_MARGIN_S = 60.0


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call. Release it when the call is over.

    ``probe`` is True when this call is the hold's probe: if Marketo accepts it, call
    :meth:`RedisLimiter.clear_hold`.
    """

    holder: str
    token: str
    acquired_at: float
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Denied:
    """No call now; ``retry_after_s`` is always > 0."""

    reason: DenyReason
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class LimiterState:
    """A consistent snapshot of the shared limits (for metrics, the CLI and health)."""

    calls_in_window: int
    slots_in_use: int
    quota_used_today: int
    quota_limit: int
    pace_wait_s: float
    cooldown_remaining_s: float
    cooldown_reason: str | None
    hold_reason: str | None
    hold_since: float | None
    next_probe_in_s: float | None


@dataclass(frozen=True, slots=True)
class LimiterKeys:
    """Key names of the limiter. One hash tag for all: one Lua step touches them all."""

    prefix: str

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{{limits}}:{name}"

    @property
    def window(self) -> str:
        return self._key("window")

    @property
    def slots(self) -> str:
        return self._key("slots")

    @property
    def cooldown(self) -> str:
        return self._key("cooldown")

    @property
    def hold(self) -> str:
        return self._key("hold")

    @property
    def spacing(self) -> str:
        return self._key("spacing")

    def quota(self, day: str) -> str:
        return self._key(f"quota:{day}")


# --- quota day (pure) -----------------------------------------------------------------


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
    The admission step in ``limits.lua`` applies the same rule atomically.
    """
    day_start_s = reset_at_s - day_length_s
    allowed = quota * (now_s - day_start_s) / day_length_s + burst
    if used + 1 <= allowed:
        return 0.0
    return day_start_s + (used + 1 - burst) * day_length_s / quota - now_s


# --- small scripts (the admission step is in limits.lua) ------------------------------

#: Scripts start with this: ``now`` is ARGV[1] when a test injects a clock, else Redis TIME.
_NOW_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

_COOLDOWN_LUA = (
    _NOW_LUA
    + """
local until_s = now + tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'until'))
if current and current >= until_s then return 0 end
redis.call('HSET', KEYS[1], 'until', string.format('%.6f', until_s), 'reason', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) + tonumber(ARGV[4])) * 1000))
return 1
"""
)

# The first hold sets since and next_probe; holding again only updates the reason.
_HOLD_LUA = (
    _NOW_LUA
    + """
local created = redis.call('HSETNX', KEYS[1], 'since', string.format('%.6f', now))
redis.call('HSETNX', KEYS[1], 'next_probe', string.format('%.6f', now + tonumber(ARGV[2])))
redis.call('HSET', KEYS[1], 'reason', ARGV[3])
return created
"""
)

_QUOTA_EXHAUSTED_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return used
"""


def _load_acquire_script() -> str:
    return resources.files("worker").joinpath("limits.lua").read_text(encoding="utf-8")


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


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
        self._slot_ttl_s = settings.request_timeout_s + SLOT_MARGIN_S
        self._acquire = redis.register_script(_load_acquire_script())
        self._cooldown = redis.register_script(_COOLDOWN_LUA)
        self._quota_exhausted = redis.register_script(_QUOTA_EXHAUSTED_LUA)
        self._hold = redis.register_script(_HOLD_LUA)

    @property
    def keys(self) -> LimiterKeys:
        return self._keys

    def _quota_key(self, now_s: float) -> str:
        return self._keys.quota(quota_day(now_s, self._settings.quota_timezone))

    def _reset_in_s(self, now_s: float) -> float:
        return next_quota_reset(now_s, self._settings.quota_timezone) - now_s

    def _local_now(self) -> float:
        """The injected clock, else this pod's: only for naming the quota day."""
        return self._clock() if self._clock is not None else time.time()

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
        self, holder: str, *, probe: bool = False, paced: bool = False
    ) -> Permit | Denied:
        """Take leave for one call, or say why not and for how long.

        While on hold only ``probe=True`` callers can pass, and only one per
        ``hold_probe_interval_s`` across the cluster. ``paced=True`` (a partial batch)
        also waits for the pace line (:func:`pace_wait_s`).
        """
        s = self._settings
        local_now = self._local_now()
        token = secrets.token_hex(8)
        keys = self._keys
        result = await self._acquire(
            keys=[
                keys.window,
                keys.slots,
                self._quota_key(local_now),
                keys.cooldown,
                keys.hold,
                keys.spacing,
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
                s.daily_quota,
                repr(next_quota_reset(local_now, s.quota_timezone)),
                repr(s.hold_probe_interval_s),
                repr(CONCURRENCY_RETRY_S),
                repr(MIN_RETRY_S),
                repr(GC_MARGIN_S),
                1 if paced else 0,
                repr(quota_day_length_s(local_now, s.quota_timezone)),
                s.pace_burst_calls,
                s.rate_burst_calls,
            ],
        )
        if int(result[0]) == 1:
            return Permit(
                holder=holder, token=token, acquired_at=local_now, probe=bool(int(result[1]))
            )
        reason = cast(DenyReason, _text(result[1]))
        return Denied(reason=reason, retry_after_s=max(float(_text(result[2]) or 0), MIN_RETRY_S))

    async def release(self, permit: Permit) -> None:
        """Free the slot. The window entry and quota count stay: the call was made."""
        await self._redis.zrem(self._keys.slots, self._slot_member(permit.holder, permit.token))

    async def cooldown(self, seconds: float, reason: str) -> None:
        """Stop every pod from calling for ``seconds``; a longer cooldown already set stays."""
        extended = await self._cooldown(
            keys=[self._keys.cooldown],
            args=[self._now_arg(), repr(seconds), reason, repr(GC_MARGIN_S)],
        )
        if int(extended):
            logger.warning("limiter cooldown for %.1f s (%s)", seconds, reason)

    async def pause_until_quota_reset(self) -> None:
        """Marketo says the daily quota is spent (20015): no call until the next reset.

        The quota is shared with other integrations, so Marketo's word beats our count:
        the day's counter is raised to the limit and expires after the day.
        """
        now = self._local_now()
        reset_in_s = self._reset_in_s(now)
        await self._quota_exhausted(
            keys=[self._quota_key(now)],
            args=[self._settings.daily_quota, _ms(reset_in_s + GC_MARGIN_S)],
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
            calls, slots, used, cooldown, hold = await pipe.execute()
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
        )
