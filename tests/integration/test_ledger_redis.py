"""The ledger against a real Redis: commit atomicity and idempotence, claims, consumers."""

from __future__ import annotations

import pytest
import redis.asyncio

from producers.contract import Keys, Outcome, OutcomeStatus
from worker.ledger import Committed, Ledger

pytestmark = pytest.mark.integration


async def make_ledger(redis_url: str) -> Ledger:
    client = redis.asyncio.Redis.from_url(redis_url)
    ledger = Ledger(client, Keys("t"), result_ttl_s=3600)
    await ledger.ensure_groups(1)
    return ledger


def outcome(entry_id: str, status: OutcomeStatus) -> Committed:
    return Committed(entry_id, "kh", Outcome(f"0-{entry_id}", status, lead_id=7))


async def test_commit_writes_outcomes_then_acks_and_deletes_and_never_rewrites_a_final_one(
    redis_url: str,
) -> None:
    ledger = await make_ledger(redis_url)
    entry = (await ledger.redis.xadd(ledger.keys.stream(0), {"k": "kh", "p": "{}"})).decode()
    read = await ledger.read(0, "c1", 10)
    assert [e.entry_id for e in read] == [entry]
    assert await ledger.commit(0, [outcome(entry, OutcomeStatus.CREATED)]) == 1
    assert await ledger.redis.xlen(ledger.keys.stream(0)) == 0
    assert (await ledger.redis.xpending(ledger.keys.stream(0), Keys.GROUP))["pending"] == 0
    # A second delivery of the same entry leaves the first final outcome alone.
    assert await ledger.commit(0, [outcome(entry, OutcomeStatus.UPDATED)]) == 0
    assert await ledger.redis.hget(ledger.keys.outcome(0, entry), "status") == b"CREATED"
    assert await ledger.redis.hget(ledger.keys.latest(0, "kh"), "entry_id") == entry.encode()
    await ledger.redis.aclose()


async def test_the_latest_state_of_a_lead_only_moves_forward(redis_url: str) -> None:
    ledger = await make_ledger(redis_url)
    await ledger.commit(0, [outcome("5-0", OutcomeStatus.UPDATED)])
    await ledger.commit(0, [outcome("3-0", OutcomeStatus.CREATED)])  # a late, older delivery
    assert await ledger.redis.hget(ledger.keys.latest(0, "kh"), "entry_id") == b"5-0"
    await ledger.redis.aclose()


async def test_pending_entries_of_a_dead_consumer_are_claimed_once_per_cycle(
    redis_url: str,
) -> None:
    ledger = await make_ledger(redis_url)
    ids = [
        (await ledger.redis.xadd(ledger.keys.stream(0), {"k": "kh", "p": "{}"})).decode()
        for _ in range(3)
    ]
    assert len(await ledger.read(0, "dead", 2)) == 2  # the dead consumer took two
    claimed = await ledger.read(0, "alive", 10)
    assert sorted(e.entry_id for e in claimed) == sorted(ids)
    again = await ledger.read(0, "alive", 10, claim_pending=False)
    assert again == []
    await ledger.redis.aclose()


async def test_idle_consumers_holding_nothing_are_pruned_and_busy_ones_kept(redis_url: str) -> None:
    ledger = await make_ledger(redis_url)
    await ledger.redis.xadd(ledger.keys.stream(0), {"k": "kh", "p": "{}"})
    await ledger.read(0, "busy", 10)
    await ledger.redis.xgroup_createconsumer(ledger.keys.stream(0), Keys.GROUP, "empty")
    assert await ledger.prune_consumers(1, idle_s=0) == 1
    names = {
        c["name"] for c in await ledger.redis.xinfo_consumers(ledger.keys.stream(0), Keys.GROUP)
    }
    assert names == {b"busy"}
    await ledger.redis.aclose()
