"""Which shards the tick should ring: a pure decision over backlogs and limiter state."""

from __future__ import annotations

from collections.abc import Sequence

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

    Work is due when a full batch is waiting or the oldest entry has waited
    ``flush_interval_s`` (entries left pending by a dead or refused cycle are old,
    so they are due too). Nothing is due during a cooldown or once the daily
    quota is used; on hold only one shard is rung, and only when a probe is due.
    """
    if state.cooldown_remaining_s > 0 or state.quota_used_today >= state.quota_limit:
        return []
    due = [
        b
        for b in backlogs
        if not b.busy
        and b.entries > 0
        and (b.entries >= batch_size or (b.oldest_age_s or 0.0) >= flush_interval_s)
    ]
    due.sort(key=lambda b: b.entries, reverse=True)
    if state.hold_reason is not None:
        probe_due = state.next_probe_in_s is None or state.next_probe_in_s <= 0
        return [due[0].shard] if due and probe_due else []
    return [b.shard for b in due]
