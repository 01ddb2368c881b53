"""The ledger against a real Redis: the fenced claim, bump and settle steps, their
ordering rules, dead-letter retention, consumers and lost consumer groups."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from producers.contract import Keys, Outcome, OutcomeStatus
from tests.support.outcomes import status_of
from worker.errors import LeaseLost
from worker.ledger import Ledger, RawEntry, Settlement

pytestmark = pytest.mark.integration

TTL_S = 30.0


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    client = redis.asyncio.Redis.from_url(redis_url)
    ledger = Ledger(client, Keys("t"), result_ttl_s=3600, dead_letter_ttl_s=600)
    await ledger.ensure_groups(1)
    yield ledger
    await client.aclose()


async def add(ledger: Ledger, key_hash: str = "kh") -> str:
    reply = await ledger.redis.xadd(ledger.keys.stream(0), {"k": key_hash, "p": "{}"})
    return str(reply.decode())


async def lease(ledger: Ledger) -> str:
    token = await ledger.acquire_lease(0, TTL_S)
    assert token is not None
    return token


def answered(entry_id: str, status: OutcomeStatus) -> tuple[RawEntry, Outcome]:
    return RawEntry(entry_id, "kh", "{}"), Outcome(f"0-{entry_id}", status, lead_id=7)


async def status(ledger: Ledger, entry_id: str) -> bytes | None:
    value = await status_of(ledger.redis, ledger.keys, f"0-{entry_id}")
    return None if value is None else value.encode()


async def test_settle_writes_outcomes_then_acks_and_never_rewrites_a_terminal_one(
    ledger: Ledger,
) -> None:
    token = await lease(ledger)
    entry = await add(ledger)
    claimed = await ledger.claim(0, token, "c1", count=10, lease_ttl_s=TTL_S)
    assert [e.entry_id for e in claimed.entries] == [entry]
    settlement = Settlement(0)
    settlement.answer(*answered(entry, OutcomeStatus.CREATED))
    assert await ledger.settle(0, token, settlement) == 1
    assert await ledger.redis.xlen(ledger.keys.stream(0)) == 0
    assert (await ledger.redis.xpending(ledger.keys.stream(0), Keys.GROUP))["pending"] == 0
    again = Settlement(0)
    again.answer(*answered(entry, OutcomeStatus.UPDATED))
    assert await ledger.settle(0, token, again) == 0
    assert await status(ledger, entry) == b"CREATED"


async def test_an_outcome_is_one_field_of_its_windows_bucket_kept_the_result_ttl(
    ledger: Ledger,
) -> None:
    token = await lease(ledger)
    entries = [await add(ledger) for _ in range(3)]
    settlement = Settlement(0)
    for entry in entries:
        settlement.answer(*answered(entry, OutcomeStatus.CREATED))
    assert await ledger.settle(0, token, settlement) == 3
    buckets = {ledger.keys.outcome_slot(0, entry)[0] for entry in entries}
    for bucket in buckets:
        assert await ledger.redis.object("encoding", bucket) == b"listpack"
        assert 3590 <= await ledger.redis.ttl(bucket) <= 3600
    bucket, field = ledger.keys.outcome_slot(0, entries[0])
    assert (await ledger.redis.hget(bucket, field) or b"").startswith(b"C0,7")
    assert await ledger.redis.keys(ledger.keys.outcome(0, "*")) == [], "no key per outcome"


async def test_outcomes_the_previous_version_wrote_are_honoured_and_replaced(
    ledger: Ledger,
) -> None:
    """Upgrade: a terminal outcome stored as the old hash is never rewritten; a PENDING
    one (a replay's) is answered in the new form and the old hash goes."""
    token = await lease(ledger)
    done, replayed = await add(ledger), await add(ledger)
    for entry, status_name in ((done, "CREATED"), (replayed, "PENDING")):
        legacy = Outcome(f"0-{entry}", OutcomeStatus(status_name), attempts=1)
        await ledger.redis.hset(ledger.keys.outcome(0, entry), mapping=legacy.to_fields())
    settlement = Settlement(0)
    settlement.answer(*answered(done, OutcomeStatus.UPDATED))
    settlement.answer(*answered(replayed, OutcomeStatus.UPDATED))
    assert await ledger.settle(0, token, settlement) == 1
    assert await status(ledger, done) == b"CREATED"
    assert await status(ledger, replayed) == b"UPDATED"
    assert await ledger.redis.exists(ledger.keys.outcome(0, replayed)) == 0
    assert await ledger.redis.hget(*ledger.keys.outcome_slot(0, done)) is None


async def test_a_cycle_claims_every_pending_entry_before_it_reads_a_new_one(
    ledger: Ledger,
) -> None:
    ids = [await add(ledger) for _ in range(6)]
    token = await lease(ledger)
    first = await ledger.claim(0, token, "c1", count=6, lease_ttl_s=TTL_S)
    assert [e.entry_id for e in first.entries] == ids  # all six now pending
    newer = [await add(ledger) for _ in range(2)]
    # Two pending at a time: three rounds walk the pending list, and only then is a
    # never-delivered (newer) entry read.
    cursor, seen = "0-0", []
    for _ in range(3):
        claimed = await ledger.claim(0, token, "c2", count=2, lease_ttl_s=TTL_S, cursor=cursor)
        seen += [e.entry_id for e in claimed.entries]
        cursor = claimed.cursor
    assert seen == ids
    last = await ledger.claim(0, token, "c2", count=2, lease_ttl_s=TTL_S, cursor=cursor)
    assert last.pending_done
    assert [e.entry_id for e in last.entries] == newer


async def test_no_new_entry_is_read_while_pending_ones_remain_unclaimed(ledger: Ledger) -> None:
    token = await lease(ledger)
    await add(ledger)
    await add(ledger)
    await ledger.claim(0, token, "c1", count=2, lease_ttl_s=TTL_S)
    await add(ledger)
    claimed = await ledger.claim(0, token, "c1", count=1, lease_ttl_s=TTL_S)
    assert len(claimed.entries) == 1
    assert not claimed.pending_done, "the pending list is not walked yet: no new reads"


async def test_every_ledger_write_is_refused_to_a_holder_whose_lease_expired(
    ledger: Ledger,
) -> None:
    entry = await add(ledger)
    stale = await lease(ledger)
    await ledger.claim(0, stale, "zombie", count=10, lease_ttl_s=TTL_S)
    await ledger.redis.delete(ledger.keys.lease(0))  # the TTL passed while it was paused
    fresh = await lease(ledger)
    with pytest.raises(LeaseLost):
        await ledger.claim(0, stale, "zombie", count=10, lease_ttl_s=TTL_S)
    with pytest.raises(LeaseLost):
        await ledger.bump_attempts(0, stale, [entry])
    with pytest.raises(LeaseLost):
        await ledger.renew_lease(0, stale, TTL_S)
    settlement = Settlement(0)
    raw, outcome = answered(entry, OutcomeStatus.DEAD_LETTERED)
    settlement.park(raw, outcome, "gave up")
    with pytest.raises(LeaseLost):
        await ledger.settle(0, stale, settlement)
    assert await status(ledger, entry) is None
    assert await ledger.redis.xlen(ledger.keys.dead_letters(0)) == 0
    assert await ledger.attempts(0, [entry]) == [0]
    # The new holder still finds the entry and can settle it.
    claimed = await ledger.claim(0, fresh, "alive", count=10, lease_ttl_s=TTL_S)
    assert [e.entry_id for e in claimed.entries] == [entry]


async def test_a_dead_letter_keeps_the_entry_payload(ledger: Ledger) -> None:
    token = await lease(ledger)
    entry = await add(ledger)
    settlement = Settlement(0)
    outcome = Outcome(f"0-{entry}", OutcomeStatus.DEAD_LETTERED, error_code="MAX_ATTEMPTS")
    settlement.park(RawEntry(entry, "kh", '{"e":"a@x.com"}', origin="1-0"), outcome, "gave up")
    await ledger.settle(0, token, settlement)
    (record,) = await ledger.redis.xrange(ledger.keys.dead_letters(0))
    fields = record[1]
    assert fields[b"p"] == b'{"e":"a@x.com"}'
    assert fields[b"o"] == b"1-0"
    assert 590 <= await ledger.redis.ttl(ledger.keys.dead_letters(0)) <= 600
    assert await ledger.redis.ttl(ledger.keys.written_fields(0, "kh")) >= 590
    assert await status(ledger, "1-0") == b"DEAD_LETTERED", "the original request is parked too"


async def test_a_refund_never_leaves_a_counter_behind(ledger: Ledger) -> None:
    token = await lease(ledger)
    entry = await add(ledger)
    assert await ledger.bump_attempts(0, token, [entry]) == [1]
    settlement = Settlement(0)
    settlement.refund([entry, "9-9"])  # 9-9 was never counted
    await ledger.settle(0, token, settlement)
    assert await ledger.redis.keys(ledger.keys.attempts(0) + "*") == []


async def test_attempt_counters_are_small_listpack_sub_hashes_emptied_at_settle(
    ledger: Ledger,
) -> None:
    """A stream's counters are spread by entry id over sub-hashes that each stay a
    listpack (~14 B a counter, where one hash of a big claim turned into a regular hash at
    ~90 B a field), live as long as a dead letter after their last count, and go with
    their entries."""
    token = await lease(ledger)
    entries = [await add(ledger) for _ in range(600)]
    await ledger.claim(0, token, "c1", count=600, lease_ttl_s=TTL_S)
    assert await ledger.bump_attempts(0, token, entries) == [1] * 600
    assert await ledger.bump_attempts(0, token, entries[:2]) == [2, 2]
    parts = {ledger.keys.attempts_slot(0, e)[0] for e in entries}
    assert len(parts) == 16
    for part in parts:
        assert await ledger.redis.object("encoding", part) == b"listpack"
        assert 590 <= await ledger.redis.ttl(part) <= 600
        assert 0 < await ledger.redis.hlen(part) <= 64
    assert await ledger.attempts(0, [*entries[:3], "9-9"]) == [2, 2, 1, 0]
    # a field is the id as one integer; an id that does not fit keeps its text
    assert ledger.keys.attempts_slot(0, "1765137000123-5")[1] == str(1765137000123 << 20 | 5)
    assert ledger.keys.attempts_slot(0, "1-1048576")[1] == "1-1048576"
    settlement = Settlement(0)
    settlement.refund(entries[:1])
    for entry in entries[1:]:
        settlement.answer(*answered(entry, OutcomeStatus.CREATED))
    await ledger.settle(0, token, settlement)
    assert await ledger.attempts(0, entries[:2]) == [1, 0], "refunded; acknowledged"
    done = Settlement(0)
    done.answer(*answered(entries[0], OutcomeStatus.CREATED))
    await ledger.settle(0, token, done)
    assert await ledger.redis.keys(ledger.keys.attempts(0) + "*") == []


async def test_counters_the_previous_version_kept_move_on_and_are_emptied(
    ledger: Ledger,
) -> None:
    """Upgrade: a counter in the stream's one attempts hash goes on counting in its
    sub-hash at the entry's next count; settle empties the old hash."""
    token = await lease(ledger)
    counted, untouched = await add(ledger), await add(ledger)
    await ledger.redis.hset(ledger.keys.attempts(0), mapping={counted: 2, untouched: 1})
    assert await ledger.attempts(0, [counted, untouched]) == [2, 1]
    assert await ledger.bump_attempts(0, token, [counted]) == [3]
    assert await ledger.redis.hkeys(ledger.keys.attempts(0)) == [untouched.encode()]
    assert await ledger.attempts(0, [counted, untouched]) == [3, 1]
    settlement = Settlement(0)
    for entry in (counted, untouched):
        settlement.answer(*answered(entry, OutcomeStatus.CREATED))
    await ledger.settle(0, token, settlement)
    assert await ledger.redis.keys(ledger.keys.attempts(0) + "*") == []


async def test_a_lost_consumer_group_is_recreated_and_the_backlog_still_drains(
    ledger: Ledger,
) -> None:
    await ledger.redis.delete(ledger.keys.stream(0))  # Redis restarted without its data
    entry = await add(ledger)  # a producer writes again: the stream exists, the group not
    token = await lease(ledger)
    claimed = await ledger.claim(0, token, "c1", count=10, lease_ttl_s=TTL_S)
    assert claimed.groups_recreated
    assert [e.entry_id for e in claimed.entries] == [entry]
    assert await ledger.redis.hexists(ledger.keys.groups_recreated(), "0")


async def test_idle_consumers_holding_nothing_are_pruned_and_busy_ones_kept(
    ledger: Ledger,
) -> None:
    token = await lease(ledger)
    await add(ledger)
    await ledger.claim(0, token, "busy", count=10, lease_ttl_s=TTL_S)
    await ledger.redis.xgroup_createconsumer(ledger.keys.stream(0), Keys.GROUP, "empty")
    assert await ledger.prune_consumers(1, idle_s=0) == 1
    names = {
        c["name"] for c in await ledger.redis.xinfo_consumers(ledger.keys.stream(0), Keys.GROUP)
    }
    assert names == {b"busy"}
