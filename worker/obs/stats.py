"""What ``leadsync stats`` shows: a read-only snapshot of the ledger, the limits and the
recent outcomes, plus the small outcome counter the drain commit path writes.

Outcomes are counted in Redis per 10 s bucket (``Keys.stats("outcomes:<bucket start>")``,
a hash of status -> count that expires after two minutes), so "outcomes in the last
minute" is the same number whichever pod or laptop asks.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from producers.contract import SHARDS_FIELD, Keys, text
from worker.ledger import Ledger, ShardBacklog
from worker.limits import LimiterState, RedisLimiter
from worker.scheduling import PaceReport, pace_report
from worker.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

OUTCOME_BUCKET_S = 10
OUTCOME_WINDOW_S = 60
#: A bucket lives a full window after it closes, then Redis drops it.
OUTCOME_BUCKET_TTL_S = 2 * OUTCOME_WINDOW_S


def outcome_bucket(now_s: float) -> int:
    return int(now_s // OUTCOME_BUCKET_S) * OUTCOME_BUCKET_S


def outcome_bucket_key(keys: Keys, bucket: int) -> str:
    return keys.stats(f"outcomes:{bucket}")


def window_buckets(now_s: float) -> list[int]:
    """The buckets of the last minute: the current (partial) one and the five before it."""
    current = outcome_bucket(now_s)
    count = OUTCOME_WINDOW_S // OUTCOME_BUCKET_S
    return [current - OUTCOME_BUCKET_S * n for n in range(count)]


async def count_outcomes(
    redis: Redis, keys: Keys, counts: Mapping[str, int], now_s: float | None = None
) -> None:
    """Add ``counts`` (status -> n) to the current bucket (one round trip)."""
    counts = {status: n for status, n in counts.items() if n}
    if not counts:
        return
    key = outcome_bucket_key(keys, outcome_bucket(time.time() if now_s is None else now_s))
    pipe = redis.pipeline(transaction=False)
    for status, n in counts.items():
        pipe.hincrby(key, status, n)
    pipe.expire(key, OUTCOME_BUCKET_TTL_S)
    await pipe.execute()


async def stored_shards(redis: Redis, keys: Keys) -> int | None:
    """The shard count agreed in Redis, or None when no producer or worker stored one."""
    value = await redis.hget(keys.config(), SHARDS_FIELD)
    stored = text(value) if value is not None else ""
    return int(stored) if stored.isdigit() else None


#: Seconds in a quota day (a DST day differs by an hour: an estimate needs no more).
DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """One look at the pipeline. ``dead_letters[s]`` is the length of shard s's DLQ."""

    taken_at: float
    shards: int
    backlogs: tuple[ShardBacklog, ...]
    dead_letters: tuple[int, ...]
    limiter: LimiterState
    outcomes_last_minute: Mapping[str, int]
    pace: PaceReport
    #: The bulk streams (numbered ``shards + s``).
    bulk: tuple[ShardBacklog, ...] = ()
    batch_size: int = 300
    #: Full calls the rate limit lets through per second (LEADSYNC_RATE_LIMIT_CALLS over
    #: LEADSYNC_RATE_LIMIT_WINDOW_S).
    calls_per_s: float = 1.0

    @property
    def backlog_total(self) -> int:
        return sum(b.entries for b in self.backlogs)

    @property
    def oldest_age_s(self) -> float | None:
        ages = [b.oldest_age_s for b in self.backlogs if b.oldest_age_s is not None]
        return max(ages) if ages else None

    @property
    def bulk_total(self) -> int:
        return sum(b.entries for b in self.bulk)

    @property
    def bulk_oldest_age_s(self) -> float | None:
        ages = [b.oldest_age_s for b in self.bulk if b.oldest_age_s is not None]
        return max(ages) if ages else None

    @property
    def live_finish_in_s(self) -> float | None:
        """When the live backlog is sent at the live lane's pace (full calls at the rate
        limit); None when it needs more calls than today's quota share has left (it then
        waits for the reset)."""
        if not self.backlog_total:
            return 0.0
        calls = math.ceil(self.backlog_total / self.batch_size)
        if calls > self.limiter.quota_limit - self.limiter.quota_used_today:
            return None
        return calls / self.calls_per_s

    @property
    def bulk_finish_in_s(self) -> float | None:
        """When the bulk backlog is sent at its budget's pace (full calls, the budget
        spread over the day); None without a budget."""
        if not self.bulk_total:
            return 0.0
        budget = self.limiter.bulk_limit
        if budget <= 0:
            return None
        calls = math.ceil(self.bulk_total / self.batch_size)
        return calls * DAY_S / budget


async def snapshot(redis: Redis, settings: Settings, now_s: float | None = None) -> StatsSnapshot:
    """Read everything ``leadsync stats`` shows; writes nothing."""
    now_s = time.time() if now_s is None else now_s
    keys = Keys(settings.key_prefix)
    shards = await stored_shards(redis, keys) or settings.shards
    ledger = Ledger.for_settings(redis, settings)
    ledger.shards = shards  # a bulk stream's lease and rest are its shard's
    streams = await ledger.backlogs(2 * shards, now_s)
    backlogs, bulk = streams[:shards], streams[shards:]
    limiter = await RedisLimiter(redis, settings, clock=lambda: now_s).state()
    pipe = redis.pipeline(transaction=False)
    for shard in range(2 * shards):  # live and bulk streams
        pipe.xlen(keys.dead_letters(shard))
    for bucket in window_buckets(now_s):
        pipe.hgetall(outcome_bucket_key(keys, bucket))
    replies = await pipe.execute()
    outcomes: Counter[str] = Counter()
    for bucket in replies[2 * shards :]:
        for status, n in bucket.items():
            outcomes[text(status)] += int(n)
    return StatsSnapshot(
        taken_at=now_s,
        shards=shards,
        backlogs=tuple(backlogs),
        dead_letters=tuple(int(n) for n in replies[: 2 * shards]),
        limiter=limiter,
        outcomes_last_minute=dict(outcomes),
        pace=pace_report(
            backlogs,
            limiter,
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
        ),
        bulk=tuple(bulk),
        batch_size=settings.batch_size,
        calls_per_s=settings.rate_limit_calls / settings.rate_limit_window_s,
    )
