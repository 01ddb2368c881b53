"""The limiter's vocabulary (its key names are with every other in ``producers.keys``): what a permit, a refusal and a snapshot of the shared
limits are, and the margins every limiter keeps. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

DenyReason: TypeAlias = Literal[
    "failover",
    "hold",
    "cooldown",
    "quota",
    "pace",
    "rate",
    "concurrency",
    "bulk_budget",
    "bulk_pace",
]

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
    :meth:`RedisLimiter.clear_hold`. ``acquired_at`` is the grant's time on the limiter's
    clock (Redis's) and ``quota_key`` the day's counter the call was counted in: a 20015
    answered after midnight still marks the day the call was made.
    """

    holder: str
    token: str
    acquired_at: float
    probe: bool = False
    quota_key: str = ""
    #: A bulk-lane call: counted in the bulk budget's day, not in the quota share.
    bulk: bool = False


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
    #: The bulk lane's calls today and its budget (LEADSYNC_BULK_DAILY_CALLS).
    bulk_used_today: int = 0
    bulk_limit: int = 0
    #: How long the next bulk call waits for the bulk budget's pace line (0: it may go).
    bulk_pace_wait_s: float = 0.0
