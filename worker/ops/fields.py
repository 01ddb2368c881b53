"""The instance's lead fields, learned: a worker reads them from Marketo's describe and
shares them in Redis (``Keys.known_fields()``), where producers and the HTTP API read them
to refuse an unknown attribute at enqueue (``producers.known_fields``).

A refresh takes a limiter permit first (a describe call counts against Marketo's rate
and quota like any other), skips the round when it is refused, and replaces the stored
set whole, in one MULTI, with the time it was learned. A failure is logged and leaves the
set learned before in place (it expires after FIELDS_KEEP_S without a refresh): it never
holds the pipeline. Marketo's word on the shared limits (a rate or concurrency refusal,
the spent quota) is honoured by every pod, as for any call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final, Literal

from producers.contract import Keys, KnownFields, decode_known_fields, encode_known_fields
from worker.errors import MarketoError, OutcomeUnknown, QuotaExceededError, ThrottledError
from worker.limits import RedisLimiter
from worker.limits.base import Denied, Permit
from worker.marketo.describe import Describe, LeadFieldNames
from worker.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

#: The learned set is kept this long after its last refresh (at least three refreshes):
#: Marketo says describe results keep a day or more; past this, any attribute is
#: accepted again rather than refused by a list nobody refreshes.
FIELDS_KEEP_S: Final = 7 * 24 * 3600
#: One refresh at a time across the cluster: a turn lasts this long.
REFRESH_TURN_S: Final = 60.0

Status = Literal["stored", "present", "busy", "limited", "failed", "disabled", "unsupported"]


@dataclass(frozen=True, slots=True)
class FieldsRefresh:
    """What one refresh did: ``stored`` (``count`` fields), ``present`` (some are stored,
    only missing ones were wanted), ``busy`` (another refresh has the turn), ``limited``
    (no permit; ``retry_after_s``), ``failed`` (``detail``), ``disabled`` or
    ``unsupported`` (no describe for this API)."""

    status: Status
    count: int = 0
    retry_after_s: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def keep_s(settings: Settings) -> int:
    """How long a learned set outlives its last refresh."""
    return max(FIELDS_KEEP_S, 3 * settings.fields_refresh_s)


async def store_fields(
    redis: Redis, keys: Keys, learned: LeadFieldNames, *, learned_at: float, keep_for_s: int
) -> int:
    """Replace the stored set with ``learned`` in one MULTI (a reader sees the old set or
    the new one, never a mix); return how many spellings are stored."""
    spellings = learned.spellings()
    stored = encode_known_fields(
        spellings, learned_at=learned_at, source=learned.source, count=len(learned.names)
    )
    key = keys.known_fields()
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=stored)  # type: ignore[arg-type]
    pipe.expire(key, keep_for_s)
    await pipe.execute()
    return len(spellings)


async def read_fields(redis: Redis, keys: Keys) -> KnownFields | None:
    """The stored set, or None when none is stored."""
    _, known = decode_known_fields(await redis.hgetall(keys.known_fields()))
    return known


async def forget_fields(redis: Redis, keys: Keys) -> bool:
    """Drop the stored set (learning is disabled): producers accept any attribute again."""
    return bool(await redis.delete(keys.known_fields()))


async def refresh_fields(
    redis: Redis,
    keys: Keys,
    limiter: RedisLimiter,
    describe: Describe,
    settings: Settings,
    *,
    holder: str,
    only_if_missing: bool = False,
) -> FieldsRefresh:
    """One refresh: the turn (one at a time), a permit, describe, store. ``only_if_missing``
    (a worker's start) does nothing while a set is stored."""
    if only_if_missing and await redis.exists(keys.known_fields()):
        return FieldsRefresh("present")
    turn = keys.control("fields-refresh")
    if not await redis.set(turn, holder, nx=True, px=int(REFRESH_TURN_S * 1000)):
        return FieldsRefresh("busy")
    permit = await limiter.acquire(holder, paced=False)
    if isinstance(permit, Denied):
        await redis.delete(turn)
        logger.info(
            "lead fields not refreshed: no permit (%s); trying again next time", permit.reason
        )
        return FieldsRefresh("limited", retry_after_s=permit.retry_after_s, detail=permit.reason)
    outcome_unknown = False
    try:
        learned = await describe()
    except MarketoError as exc:
        outcome_unknown = isinstance(exc, OutcomeUnknown)
        await _honour_limits(limiter, permit, exc, settings)
        logger.warning(
            "lead fields not refreshed: Marketo's describe failed (%s: %s); producers keep "
            "the fields learned before",
            type(exc).__name__,
            exc,
        )
        return FieldsRefresh("failed", detail=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if outcome_unknown:
            # Marketo may still be answering it: its slot stays taken, as after a sync.
            await limiter.keep_slot(permit, settings.unknown_outcome_rest_s)
        else:
            await limiter.release(permit)
    if not learned.names:
        logger.warning("lead fields not refreshed: Marketo's describe listed none")
        return FieldsRefresh("failed", detail="describe listed no fields")
    spellings = await store_fields(
        redis, keys, learned, learned_at=time.time(), keep_for_s=keep_s(settings)
    )
    logger.info(
        "learned %d lead fields (%d spellings) from Marketo's %s",
        len(learned.names),
        spellings,
        learned.source,
    )
    return FieldsRefresh("stored", count=len(learned.names))


async def _honour_limits(
    limiter: RedisLimiter, permit: Permit, exc: MarketoError, settings: Settings
) -> None:
    """Marketo's refusals are about the instance, whatever the call: every pod honours
    them. Credentials or permissions refused for describe never hold the pipeline."""
    if isinstance(exc, ThrottledError):
        await limiter.cooldown(settings.throttle_cooldown_s, f"describe: {exc}"[:200])
    elif isinstance(exc, QuotaExceededError):
        await limiter.pause_until_quota_reset(permit)
