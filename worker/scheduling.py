"""Which shards the tick should ring: a pure decision over backlogs and limiter state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from worker.ledger import ShardBacklog
from worker.limits import LimiterState


def due_shards(
    backlogs: Sequence[ShardBacklog],
    state: LimiterState,
    *,
    batch_size: int,
    flush_interval_s: float,
) -> list[int]:
    """Shards with work due and no live lease, fullest first.

    Work is due when a full batch is waiting, or the oldest entry has waited
    ``flush_interval_s`` (entries left pending by a dead or refused cycle are old,
    so they are due too) and the quota pace lets a partial batch go. Nothing is due
    during a cooldown or once the daily quota is used; on hold only one shard is rung,
    and only when a probe is due.
    """
    if state.cooldown_remaining_s > 0 or state.quota_used_today >= state.quota_limit:
        return []
    partial_ok = state.pace_wait_s <= 0
    due = [
        b
        for b in backlogs
        if not b.busy
        and b.entries > 0
        and (
            b.entries >= batch_size or (partial_ok and (b.oldest_age_s or 0.0) >= flush_interval_s)
        )
    ]
    due.sort(key=lambda b: b.entries, reverse=True)
    if state.hold_reason is not None:
        probe_due = state.next_probe_in_s is None or state.next_probe_in_s <= 0
        return [due[0].shard] if due and probe_due else []
    return [b.shard for b in due]


def call_groups(
    backlogs: Sequence[ShardBacklog],
    state: LimiterState,
    *,
    batch_size: int,
    flush_interval_s: float,
) -> list[list[int]]:
    """The drains to ring now, each a group of shards whose records share one call.

    - A shard holding a full batch drains alone, whatever the pace (the shard count
      sets the parallel calls under a backlog).
    - The other shards with work, oldest entry first, are packed into groups that
      each hold at least a full call: such a call goes at once, whatever the entries'
      age, since a full call is the best use of the quota. The drain cuts the last
      shard's part to fill the call; the rest stays pending.
    - What is left goes in one more call only when it holds an entry that has waited
      ``flush_interval_s`` and the quota pace lets a partial call go.

    So under a steady inflow a call goes when a full batch has gathered across all
    shards or the oldest entry has waited the flush interval, whichever comes first,
    and the leftover of a full call waits for the next one instead of going out half
    empty. Nothing goes during a cooldown or once the quota is used; on hold only the
    probe's shard is rung.
    """
    if state.hold_reason is not None:
        return [
            [shard]
            for shard in due_shards(
                backlogs, state, batch_size=batch_size, flush_interval_s=flush_interval_s
            )
        ]
    if state.cooldown_remaining_s > 0 or state.quota_used_today >= state.quota_limit:
        return []
    free = [b for b in backlogs if not b.busy and b.entries > 0]
    full = sorted((b for b in free if b.entries >= batch_size), key=lambda b: -b.entries)
    groups = [[b.shard] for b in full]
    partial = sorted(
        (b for b in free if b.entries < batch_size), key=lambda b: -(b.oldest_age_s or 0.0)
    )
    group: list[int] = []
    filled, due = 0, False
    for backlog in partial:
        group.append(backlog.shard)
        filled += backlog.entries
        due = due or (backlog.oldest_age_s or 0.0) >= flush_interval_s
        if filled >= batch_size:
            groups.append(group)
            group, filled, due = [], 0, False
    if group and due and state.pace_wait_s <= 0:
        groups.append(group)
    return groups


def bulk_drains(
    live: Sequence[ShardBacklog],
    bulk: Sequence[ShardBacklog],
    state: LimiterState,
    *,
    live_rung: bool,
) -> list[list[int]]:
    """The bulk stream to drain now, if any: only while no live drain is being rung,
    nothing stops calls (hold, cooldown) and the bulk budget (its own, apart from the live
    share; a 20015 exhausts both) and its pace line let a call go; among the bulk streams whose shard has no live entry waiting and is free,
    the one with the oldest entry. One per tick: the budget spreads the calls anyway, and
    a drain that sent rings itself again while its backlog lasts."""
    if (
        live_rung
        or state.hold_reason is not None
        or state.cooldown_remaining_s > 0
        or state.bulk_used_today >= state.bulk_limit
        or state.bulk_pace_wait_s > 0
    ):
        return []
    quiet = {b.shard for b in live if b.entries == 0 and not b.busy}
    ready = [b for b in bulk if b.entries > 0 and not b.busy and b.shard - len(live) in quiet]
    if not ready:
        return []
    oldest = max(ready, key=lambda b: b.oldest_age_s or 0.0)
    return [[oldest.shard]]


@dataclass(frozen=True, slots=True)
class PaceReport:
    """Whether the quota pace holds partial batches back, and what the inflow would need."""

    waiting_batches: int
    wait_s: float
    calls_needed_per_day: int
    share_per_day: int

    @property
    def short(self) -> bool:
        """True when partial batches wait for the pace: the inflow needs more calls than
        LEADSYNC_DAILY_QUOTA allows at LEADSYNC_FLUSH_INTERVAL_S."""
        return self.waiting_batches > 0 and self.wait_s > 0

    def describe(self) -> str:
        if not self.short:
            return f"partial batches go when due (share {self.share_per_day:,} calls a day)"
        return (
            f"{self.waiting_batches} partial batches wait {self.wait_s:.0f} s for the quota pace: "
            f"at this flush interval the inflow needs about {self.calls_needed_per_day:,} calls "
            f"a day, the share is {self.share_per_day:,}; latency grows instead of the bill "
            "(raise LEADSYNC_FLUSH_INTERVAL_S to fill calls, or LEADSYNC_DAILY_QUOTA)"
        )


def pace_report(
    backlogs: Sequence[ShardBacklog],
    state: LimiterState,
    *,
    batch_size: int,
    flush_interval_s: float,
) -> PaceReport:
    """Partial batches due but held by the pace, and an estimate of the calls a day the
    inflow needs: its rate is read off the backlog (entries over the oldest one's age);
    light inflow needs one call per flush interval, heavy inflow one per full batch."""
    partial_due = [
        b
        for b in backlogs
        if 0 < b.entries < batch_size and (b.oldest_age_s or 0.0) >= flush_interval_s
    ]
    with_work = [b for b in backlogs if b.entries > 0]
    total = sum(b.entries for b in with_work)
    span_s = max((b.oldest_age_s or 0.0 for b in with_work), default=0.0)
    rate = total / max(span_s, flush_interval_s, 1.0)
    calls_per_s = max(1 / max(flush_interval_s, 1.0), rate / batch_size) if total else 0.0
    needed = math.ceil(86_400 * calls_per_s)
    return PaceReport(
        waiting_batches=len(partial_due) if state.pace_wait_s > 0 else 0,
        wait_s=state.pace_wait_s,
        calls_needed_per_day=needed,
        share_per_day=state.quota_limit,
    )
