"""Which shards the tick should ring: a pure decision over backlogs and limiter state."""

from __future__ import annotations

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
    backlogs: Sequence[ShardBacklog], due: Sequence[int], *, batch_size: int
) -> list[list[int]]:
    """How to drain the due shards: a shard holding a full batch alone (the shard count
    sets the parallel calls under a backlog); shards with partial batches together, as
    few calls as their entries fill (first fit, fullest first), so light traffic over
    many shards fills one call instead of one per shard. Shards whose partial batch is
    not due yet ride along where there is room: under an even inflow every shard comes
    due at a different moment, and without riders each would still make its own call
    one tick after the other."""
    entries = {b.shard: b.entries for b in backlogs}
    groups: list[list[int]] = []
    room: list[int] = []
    due_set = set(due)
    riders = sorted(
        (
            b
            for b in backlogs
            if b.shard not in due_set and not b.busy and 0 < b.entries < batch_size
        ),
        key=lambda b: b.entries,
        reverse=True,
    )
    for shard in due:
        n = entries.get(shard, 0)
        if n >= batch_size:
            groups.append([shard])
            room.append(0)
            continue
        for index, left in enumerate(room):
            if n <= left:
                groups[index].append(shard)
                room[index] = left - n
                break
        else:
            groups.append([shard])
            room.append(batch_size - n)
    for rider in riders:
        for index, left in enumerate(room):
            if 0 < rider.entries <= left:
                groups[index].append(rider.shard)
                room[index] = left - rider.entries
                break
    return groups


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
    inflow needs: one per shard with work per flush interval, plus one per full batch."""
    partial_due = [
        b
        for b in backlogs
        if 0 < b.entries < batch_size and (b.oldest_age_s or 0.0) >= flush_interval_s
    ]
    with_work = [b for b in backlogs if b.entries > 0]
    per_day = 86_400 / max(flush_interval_s, 1.0)
    full = sum(b.entries // batch_size for b in with_work)
    needed = int(len(with_work) * per_day + full)
    return PaceReport(
        waiting_batches=len(partial_due) if state.pace_wait_s > 0 else 0,
        wait_s=state.pace_wait_s,
        calls_needed_per_day=needed,
        share_per_day=state.quota_limit,
    )
