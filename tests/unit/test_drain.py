"""The drain cycle's decisions, driven directly: a real Redis (its Lua, not an
emulation), a stub transport, no Celery."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from marketo_sim.soap import SimFault, SyncStatus, parse_request_bytes, render_fault, render_success
from producers.contract import LeadUpsert, OutcomeStatus, encode_lead, key_digest, validate_lead
from tests.support.drain_kit import (
    Clock,
    Marketo,
    enqueue,
    fault,
    make,
    ok,
    outcome_of,
    poison_on,
    statuses,
)
from worker.core.batching import QueuedLead, plan_batches
from worker.core.isolation import isolation_budget
from worker.drain import Drainer, pick_batch
from worker.drain.calls import STALE_TURN_S
from worker.errors import TransientError
from worker.limits import WINDOW_MARGIN_S, RedisLimiter
from worker.marketo import MarketoApi, SyncResult
from worker.marketo.base import Fence, PreparedCall, no_fence
from worker.transport import HttpReply, MockTransport


@pytest.fixture
def redis(aredis: Redis) -> Redis:
    return aredis


async def test_a_cycle_sends_one_call_and_commits_every_outcome(
    redis: Redis,
) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo)
    ids = await enqueue(drainer, "a@x.com", "b@x.com", "A@X.com")
    report = await drainer.drain(0)
    assert report.status == "sent"
    assert marketo.calls == [
        ["A@X.com", "b@x.com"]
    ]  # both upserts of a@x.com merged; the last spelling wins
    assert await statuses(drainer, ids) == ["CREATED", "CREATED", "CREATED"]
    assert await redis.xlen(drainer.keys.stream(0)) == 0


async def test_a_partial_batch_waits_for_its_flush_interval(
    redis: Redis,
) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo, flush_interval_s=60.0)
    ids = await enqueue(drainer, "a@x.com")
    report = await drainer.drain(0)
    assert report.status == "waiting"
    assert marketo.calls == []
    assert await statuses(drainer, ids) == [None]


async def test_throttling_fails_no_lead_and_cools_every_pod_down(
    redis: Redis,
) -> None:
    marketo = Marketo(fault(20023))
    drainer = make(redis, marketo)
    ids = await enqueue(drainer, "a@x.com", "b@x.com")
    report = await drainer.drain(0)
    assert report.status == "limited"
    assert await statuses(drainer, ids) == [None, None]
    state = await drainer.limiter.state()
    assert state.cooldown_remaining_s >= drainer.settings.throttle_cooldown_s * 0.99
    assert await drainer.ledger.attempts(0, ids) == [0, 0], "a refused call costs no attempt"
    again = await drainer.drain(0)
    assert again.status == "limited"
    assert again.reason == "cooldown"
    assert len(marketo.calls) == 1, "no call is made during the cooldown"


async def test_bad_credentials_hold_the_pipeline_and_keep_leads_pending(
    redis: Redis,
) -> None:
    marketo = Marketo(fault(20014), ok)
    drainer = make(redis, marketo, hold_probe_interval_s=60.0)
    ids = await enqueue(drainer, "a@x.com")
    report = await drainer.drain(0)
    assert report.status == "held"
    assert (await drainer.limiter.state()).hold_reason is not None
    assert await statuses(drainer, ids) == [None]
    refused = REGISTRY.get_sample_value("leadsync_limiter_refusals_total", {"reason": "hold"})
    assert (await drainer.drain(0)).status == "held"
    assert len(marketo.calls) == 1
    after = REGISTRY.get_sample_value("leadsync_limiter_refusals_total", {"reason": "hold"})
    assert (after or 0) - (refused or 0) == 1, "the refusal is counted by its reason"


async def test_a_poison_record_is_isolated_and_the_rest_are_sent(
    redis: Redis,
) -> None:
    emails = [f"p{i}@x.com" for i in range(9)]
    marketo = Marketo(poison_on("p5@x.com"))
    drainer = make(redis, marketo)
    ids = await enqueue(drainer, *emails)
    await drainer.drain(0)
    result = await statuses(drainer, ids)
    assert result[5] == "FAILED"
    assert result[:5] + result[6:] == ["CREATED"] * 8
    assert (await outcome_of(drainer, ids[5])).error_code == "20105"
    assert len(marketo.calls) <= 1 + 2 * 4, "splitting is logarithmic"


async def test_transient_faults_leave_entries_pending_and_rest_the_shard(
    redis: Redis,
) -> None:
    marketo = Marketo(fault(10001))
    clock = Clock()
    # The rest lasts 5-10 s of the drainer's clock (a wall-clock window this short is
    # never asserted: the test moves the clock itself).
    drainer = make(redis, marketo, clock=clock, backoff_initial_s=5.0, backoff_max_s=10.0)
    ids = await enqueue(drainer, "a@x.com")
    report = await drainer.drain(0)
    assert report.status == "backoff"
    assert len(marketo.calls) == 2  # one try plus LEADSYNC_TRANSIENT_RETRIES=1
    assert await statuses(drainer, ids) == [None]
    assert await drainer.ledger.attempts(0, ids) == [1]
    (backlog,) = await drainer.ledger.backlogs(1, now_s=clock())
    assert backlog.busy, "the shard rests before the next cycle"
    # The rest is stored on Redis's clock: 5-10 s from now, and no lease meanwhile.
    assert 4.5 <= await rest_left_s(redis, drainer, 0) <= 10.0
    assert await drainer.ledger.acquire_lease(0, 30) is None, "no sender takes a resting shard"


async def rest_left_s(redis: Redis, drainer: Drainer, shard: int) -> float:
    """Seconds the shard still rests, on Redis's clock."""
    stored = await redis.get(drainer.keys.rest(shard))
    seconds, micros = await redis.time()
    return float(stored or 0) - (seconds + micros / 1_000_000)


async def test_an_entry_past_max_attempts_moves_to_the_dead_letter_stream(
    redis: Redis,
) -> None:
    marketo = Marketo(fault(10001))
    drainer = make(redis, marketo, max_attempts=2, transient_retries=0)
    ids = await enqueue(drainer, "a@x.com")
    for _ in range(3):
        await redis.delete(drainer.keys.control("backoff:0"))
        await drainer.drain(0)
    assert await statuses(drainer, ids) == [OutcomeStatus.DEAD_LETTERED.value]
    assert await redis.xlen(drainer.keys.dead_letters(0)) == 1
    assert await redis.xlen(drainer.keys.stream(0)) == 0


async def test_an_unreadable_payload_fails_alone(redis: Redis) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo)
    good = await enqueue(drainer, "a@x.com")
    bad = (await redis.xadd(drainer.keys.stream(0), {"k": "x", "p": "{not json"})).decode()
    await drainer.drain(0)
    assert await statuses(drainer, [*good, bad]) == ["CREATED", "FAILED"]


async def test_a_second_drain_of_a_leased_shard_does_nothing(
    redis: Redis,
) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo)
    await enqueue(drainer, "a@x.com")
    token = await drainer.ledger.acquire_lease(0, 30)
    assert token is not None
    report = await drainer.drain(0)
    assert report.status == "busy"
    assert marketo.calls == []


def test_pick_batch_prefers_the_oldest_due_batch_so_small_batches_are_not_starved() -> None:
    full = plan_batches([queued_lead(f"2000-{i}", f"f{i}@x.com") for i in range(3)], 3)
    small = plan_batches([queued_lead("1000-0", "old@x.com", dedup=False)], 3)
    batches = [*full, *small]
    assert (
        pick_batch(batches, 3, flush_interval_s=5.0, now_s=1.5) is full[0]
    )  # the small one is not due yet
    assert pick_batch(batches, 3, flush_interval_s=0.1, now_s=1.5) is small[0]
    assert pick_batch(small, 3, flush_interval_s=5.0, now_s=1.5) is None


async def test_a_cycle_that_reads_twice_never_sees_an_entry_twice(
    redis: Redis,
) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo, batch_size=4)
    # Eight upserts of two people: the first read coalesces to 2 records, so the cycle reads again.
    ids = await enqueue(drainer, *(["a@x.com", "b@x.com"] * 4), "c@x.com", "d@x.com")
    report = await drainer.drain(0)
    assert report.entries == len(ids)
    assert marketo.calls == [["a@x.com", "b@x.com", "c@x.com", "d@x.com"]]
    assert await drainer.ledger.attempts(0, ids) == [0] * len(ids)  # committed: counters dropped
    assert await statuses(drainer, ids) == ["CREATED"] * len(ids)


def queued_lead(entry_id: str, email: str, dedup: bool = True) -> QueuedLead:
    lead = validate_lead(email=email, dedup=dedup)
    return QueuedLead(entry_id, key_digest(lead.key), lead)


async def test_a_signature_that_stays_expired_backs_off_instead_of_crashing(
    redis: Redis,
) -> None:
    marketo = Marketo(fault(20016))
    drainer = make(redis, marketo)
    ids = await enqueue(drainer, "a@x.com")
    report = await drainer.drain(0)
    assert report.status == "backoff"
    assert len(marketo.calls) == 3  # first try + two immediate re-signs
    assert await statuses(drainer, ids) == [None]


async def test_a_drain_past_its_timeout_stops_and_releases_its_lease_and_slot(
    redis: Redis,
) -> None:
    """R9: a drain cut short (here by LEADSYNC_DRAIN_TIMEOUT_S; under Celery by the soft
    time limit) must not stay suspended holding its lease and limiter slot."""

    async def hangs(_body: bytes, _headers: object) -> HttpReply:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    drainer = make(redis, Marketo(ok), drain_budget_s=0.05, drain_timeout_s=0.2)
    drainer.api.transport = MockTransport(hangs)
    ids = await enqueue(drainer, "a@x.com")
    report = await drainer.drain(0)
    assert (report.status, report.reason) == ("backoff", "drain timeout")
    assert not await redis.exists(drainer.keys.lease(0))
    assert await statuses(drainer, ids) == [None], "the entry stays pending"
    # The cut call may still run in Marketo: its slot stays taken and the shard rests for
    # LEADSYNC_UNKNOWN_OUTCOME_REST_S, whoever asks for it next.
    assert (await drainer.limiter.state()).slots_in_use == 1
    rest_s = drainer.settings.unknown_outcome_rest_s
    assert rest_s - 1 <= await rest_left_s(redis, drainer, 0) <= rest_s
    again = await drainer.drain(0)
    assert (again.status, again.calls) == ("busy", 0)


async def test_isolation_stops_at_the_drain_budget_and_leaves_the_rest_pending(
    redis: Redis,
) -> None:
    """R9/R3: when every record faults the call, splitting stops once the drain budget is
    spent (after the first answer), instead of walking the whole tree in one drain."""
    marketo = Marketo(fault(20105))
    drainer = make(redis, marketo, drain_budget_s=0.001)
    ids = await enqueue(drainer, *(f"p{i}@x.com" for i in range(16)))
    await drainer.drain(0)
    result = await statuses(drainer, ids)
    assert result.count("FAILED") == 1
    assert result.count(None) == 15
    assert len(marketo.calls) == 5, "one path down the tree: 16, 8, 4, 2, 1"


def unknown_field_marketo(known: frozenset[str]) -> tuple[list[int], MockTransport]:
    """A Marketo that faults 20105 naming every unknown attribute of the call, as
    Marketo does; returns (the size of every call, its transport)."""
    sizes: list[int] = []

    def handle(body: bytes, _headers: object) -> HttpReply:
        records = parse_request_bytes(body).records
        sizes.append(len(records))
        unknown = sorted({a.name for r in records for a in r.attributes} - known)
        if unknown:
            message = f"syncMultipleLeads operation failed: unknown fields for import: {', '.join(unknown)}"
            return HttpReply(500, "text/xml", render_fault(SimFault(20105, message)))
        return ok([r.email for r in records])

    return sizes, MockTransport(handle)


async def test_a_batch_whose_every_record_has_an_unknown_field_costs_one_call(
    redis: Redis,
) -> None:
    """R3: one app deploy ahead of the Marketo admin used to cost 2n-1 calls (599 for 300)."""
    sizes, transport = unknown_field_marketo(frozenset({"FirstName"}))
    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = transport
    ids = await enqueue(drainer, *(f"p{i}@x.com" for i in range(300)), NewField="x")
    await drainer.drain(0)
    assert sizes == [300]
    assert await statuses(drainer, ids) == ["FAILED"] * 300
    assert "NewField" in ((await outcome_of(drainer, ids[0])).error or "")


async def test_three_records_with_unknown_fields_among_good_ones_cost_two_calls(
    redis: Redis,
) -> None:
    sizes, transport = unknown_field_marketo(frozenset({"FirstName"}))
    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = transport
    good = await enqueue(drainer, *(f"g{i}@x.com" for i in range(297)), FirstName="Ann")
    bad = []
    for field in ("Pants", "Shoes", "Hats"):
        bad += await enqueue(drainer, f"{field}@x.com", **{field: "x"})
    await drainer.drain(0)
    assert sizes == [300, 297]
    assert await statuses(drainer, bad) == ["FAILED"] * 3
    error = (await outcome_of(drainer, bad[0])).error
    assert error == "20105 unknown field Pants", "a lead's reason names only its own fields"
    assert await statuses(drainer, good) == ["CREATED"] * 297


async def test_a_lead_s_good_write_never_fails_with_its_bad_write_merged_beside_it(
    redis: Redis,
) -> None:
    """Two writes of one lead ride merged in one record: write 1 good, write 2 with a field
    the instance lacks. The 20105 names that field: only write 2 fails; write 1 stays
    pending and reaches Marketo alone next (it failed beside write 2 before)."""
    sizes, transport = unknown_field_marketo(frozenset({"Company", "City"}))
    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = transport
    (good,) = await enqueue(drainer, "ann@x.com", Company="Acme", City="Paris")
    (bad,) = await enqueue(drainer, "ann@x.com", Shoe="x")
    for _ in range(3):
        await drainer.drain(0)
    assert await statuses(drainer, [good, bad]) == ["CREATED", "FAILED"]
    assert (await outcome_of(drainer, bad)).error == "20105 unknown field Shoe"
    assert sizes == [1, 1], "one call with the fault, one with the good write alone"


async def test_a_cross_shard_call_takes_each_merged_write_from_its_own_shard(
    redis: Redis,
) -> None:
    """Two shards gave one entry id to two writes (ids are per shard). In one call across
    both, ann's good write must not be judged by bob's bad write of the same id."""
    sizes, transport = unknown_field_marketo(frozenset({"Company"}))
    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = transport
    await drainer.ledger.ensure_groups([0, 1])

    async def put(shard: int, entry_id: str, email: str, **attributes: str) -> str:
        lead = validate_lead(email=email, attributes=attributes)
        fields = {"k": key_digest(lead.key), "p": encode_lead(lead)}
        await redis.xadd(drainer.keys.stream(shard), fields, id=entry_id)  # type: ignore[arg-type]
        return entry_id

    good = await put(0, "1000-0", "ann@x.com", Company="Acme")
    bad = await put(0, "1000-1", "ann@x.com", Shoe="x")
    other = await put(1, "1000-0", "bob@x.com", Shoe="y")
    await drainer.drain_together([0, 1])
    for _ in range(2):
        await drainer.drain(0)
    assert await statuses(drainer, [good, bad]) == ["CREATED", "FAILED"]
    assert await statuses(drainer, [other], 1) == ["FAILED"]
    assert sizes == [2, 1]


async def test_a_merged_record_failed_on_its_own_fails_only_the_write_at_fault(
    redis: Redis,
) -> None:
    """Marketo fails a record in its answer (a value it rejects), not the call. When the
    record merges two writes of a lead, the good write was failed with the bad one: its
    oldest write goes alone next, the other waits, and only the write at fault fails."""
    calls: list[list[str | None]] = []

    def handle(body: bytes, _headers: object) -> HttpReply:
        records = parse_request_bytes(body).records
        calls.append([r.email for r in records])
        statuses = [
            SyncStatus(n + 1, "FAILED", "Value rejected")
            if any(a.value == "POISON" for a in r.attributes)
            else SyncStatus(n + 1, "CREATED")
            for n, r in enumerate(records)
        ]
        return HttpReply(200, "text/xml", render_success(statuses))

    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = MockTransport(handle)
    (good,) = await enqueue(drainer, "ann@x.com", Company="Acme")
    (bad,) = await enqueue(drainer, "ann@x.com", City="POISON")
    (other,) = await enqueue(drainer, "bob@x.com", Company="Initech")
    for _ in range(3):
        await drainer.drain(0)
    assert await statuses(drainer, [good, bad, other]) == ["CREATED", "FAILED", "CREATED"]
    assert (await outcome_of(drainer, bad)).error == "Value rejected"
    assert calls == [["ann@x.com", "bob@x.com"], ["ann@x.com"], ["ann@x.com"]]


def poison_value_marketo(bad: str) -> tuple[list[list[str | None]], MockTransport]:
    """A Marketo that faults the whole call, naming nothing (20110), while any record
    carries the value ``bad``; returns (the emails of every call, its transport)."""
    calls: list[list[str | None]] = []

    def handle(body: bytes, _headers: object) -> HttpReply:
        records = parse_request_bytes(body).records
        calls.append([r.email for r in records])
        if any(a.value == bad for r in records for a in r.attributes):
            return HttpReply(500, "text/xml", render_fault(SimFault(20110)))
        return ok([r.email for r in records])

    return calls, MockTransport(handle)


@pytest.mark.parametrize("bad_write", [0, 1])
async def test_a_merged_record_proven_bad_alone_fails_only_the_write_at_fault(
    redis: Redis, bad_write: int
) -> None:
    """Bisection proves a record bad alone, but a record merging two writes of a lead
    is not one write: the oldest goes alone next, then the other, and only the write
    carrying the fault fails (both failed before, the good one with its neighbour)."""
    calls, transport = poison_value_marketo("POISON")
    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = transport
    good = await enqueue(drainer, "good@x.com", Company="Fine")
    values = ["Acme", "Paris"]
    values[bad_write] = "POISON"
    (first,) = await enqueue(drainer, "ann@x.com", Company=values[0])
    (second,) = await enqueue(drainer, "ann@x.com", City=values[1])
    for _ in range(3):
        await drainer.drain(0)
    expected = ["CREATED", "CREATED"]
    expected[bad_write] = "FAILED"
    assert await statuses(drainer, [first, second]) == expected
    assert await statuses(drainer, good) == ["CREATED"]
    assert len(calls) <= 6, calls


async def test_isolation_past_its_call_budget_leaves_the_unproven_pending_with_their_attempts(
    redis: Redis,
) -> None:
    """A record fault that names no field (20110 here) on every record: a cycle stops
    bisecting at the stated budget; records not yet proven bad stay pending with their
    attempts given back (a neighbour's fault never dead-letters them), and later cycles go
    on until every record is proven, alone."""
    marketo = Marketo(fault(20110))
    drainer = make(redis, marketo, batch_size=16, batches_per_drain=1)
    ids = await enqueue(drainer, *(f"p{i}@x.com" for i in range(16)))
    report = await drainer.drain(0)
    assert len(marketo.calls) == 1 + isolation_budget(16)
    assert report.isolation_calls == isolation_budget(16)
    result = await statuses(drainer, ids)
    assert "DEAD_LETTERED" not in result
    assert 0 < result.count("FAILED") < 16
    pending = [e for e, status in zip(ids, result, strict=True) if status is None]
    assert await drainer.ledger.attempts(0, pending) == [0] * len(pending)
    for _ in range(32):
        if None not in await statuses(drainer, ids):
            break
        await drainer.drain(0)
    assert await statuses(drainer, ids) == ["FAILED"] * 16
    assert await redis.xlen(drainer.keys.dead_letters(0)) == 0


async def test_bad_records_never_dead_letter_their_good_neighbours(redis: Redis) -> None:
    """Issue 18: 46 good leads ended DEAD_LETTERED ("isolation budget spent") beside
    hostile records whose fault names no field. Every good record ends CREATED; every bad
    one FAILED with Marketo's reason, proven alone."""
    bad_emails = {f"bad{i}@x.com" for i in range(12)}

    def faults_on_bad(emails: list[str | None]) -> HttpReply:
        return fault(20110)(emails) if bad_emails & set(emails) else ok(emails)

    marketo = Marketo(faults_on_bad)
    drainer = make(redis, marketo, batch_size=100, batches_per_drain=1)
    emails = [f"good{i}@x.com" for i in range(88)] + sorted(bad_emails)
    random.Random(7).shuffle(emails)
    ids = await enqueue(drainer, *emails)
    for _ in range(40):
        if None not in await statuses(drainer, ids):
            break
        await drainer.drain(0)
    by_email = dict(zip(emails, await statuses(drainer, ids), strict=True))
    assert {e for e, st in by_email.items() if st == "FAILED"} == bad_emails
    assert {st for e, st in by_email.items() if e not in bad_emails} == {"CREATED"}
    assert await redis.xlen(drainer.keys.dead_letters(0)) == 0


@pytest.mark.parametrize(
    "listed",
    [
        "'Pants', \"Shoes\"",  # quoted
        "PANTS, shoes",  # another case
        "[Pants] [Shoes]",  # not a comma list: the batch's own names are looked for
    ],
)
async def test_a_20105_names_its_fields_however_they_are_written(redis: Redis, listed: str) -> None:
    """Names quoted, in another case, or not split by commas still pin the records that
    carry them: two calls, not a bisection and dead letters."""
    sizes: list[int] = []

    def handle(body: bytes, _headers: object) -> HttpReply:
        records = parse_request_bytes(body).records
        sizes.append(len(records))
        if any(a.name in ("Pants", "Shoes") for r in records for a in r.attributes):
            message = f"syncMultipleLeads operation failed: unknown fields for import: {listed}"
            return HttpReply(500, "text/xml", render_fault(SimFault(20105, message)))
        return ok([r.email for r in records])

    drainer = make(redis, Marketo(ok), batch_size=300)
    drainer.api.transport = MockTransport(handle)  # type: ignore[attr-defined]
    good = await enqueue(drainer, *(f"g{i}@x.com" for i in range(30)), FirstName="Ann")
    bad = await enqueue(drainer, "p@x.com", Pants="x") + await enqueue(
        drainer, "s@x.com", Shoes="y"
    )
    await drainer.drain(0)
    assert sizes == [32, 30]
    assert await statuses(drainer, bad) == ["FAILED", "FAILED"]
    assert await statuses(drainer, good) == ["CREATED"] * 30


async def test_partial_batches_of_several_shards_ride_in_one_call(redis: Redis) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo, shards=3, batch_size=10)
    ids = {s: await enqueue(drainer, f"a{s}@x.com", f"b{s}@x.com", shard=s) for s in range(3)}
    report = await drainer.drain_together([0, 1, 2])
    assert report.status == "sent"
    assert len(marketo.calls) == 1
    assert sorted(marketo.calls[0]) == sorted(f"{p}{s}@x.com" for s in range(3) for p in "ab")
    for shard, entry_ids in ids.items():
        assert await statuses(drainer, entry_ids, shard) == ["CREATED", "CREATED"]
        assert not await redis.exists(drainer.keys.lease(shard)), "every lease is released"


async def test_a_shared_call_leaves_out_a_shard_another_worker_holds_and_fills_to_the_cap(
    redis: Redis,
) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo, shards=3, batch_size=3)
    first = await enqueue(drainer, "a0@x.com", "b0@x.com", shard=0)
    second = await enqueue(drainer, "a1@x.com", "b1@x.com", shard=1)
    held = await enqueue(drainer, "a2@x.com", shard=2)
    assert await drainer.ledger.acquire_lease(2, 60) is not None  # another worker's
    await drainer.drain_together([0, 1, 2])
    assert marketo.calls == [["a0@x.com", "b0@x.com", "a1@x.com"]], "oldest first, cut at 3"
    assert await statuses(drainer, first) == ["CREATED", "CREATED"]
    assert await statuses(drainer, second, 1) == ["CREATED", None], "the rest stays pending"
    assert await statuses(drainer, held, 2) == [None]


async def test_a_refused_shared_call_refunds_every_shard_and_leaves_everything_pending(
    redis: Redis,
) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo, shards=2, batch_size=10)
    ids = [await enqueue(drainer, f"p{s}@x.com", shard=s) for s in range(2)]
    await drainer.limiter.cooldown(60, "test")
    report = await drainer.drain_together([0, 1])
    assert report.status == "limited"
    assert marketo.calls == []
    for shard in range(2):
        assert await statuses(drainer, ids[shard], shard) == [None]
        assert await drainer.ledger.attempts(shard, ids[shard]) == [0]


async def test_a_shard_not_due_yet_rides_along_in_a_shared_call(redis: Redis) -> None:
    """Under an even inflow shards come due one after the other; a shared call takes
    the not-yet-due partial batches too instead of leaving each its own call."""
    marketo = Marketo(ok)
    clock = Clock()
    drainer = make(redis, marketo, clock=clock, shards=2, batch_size=10, flush_interval_s=30.0)
    (old,) = await enqueue(drainer, "due@x.com", shard=0)
    clock.advance(31)  # shard 0's entry is due now
    await drainer.ledger.ensure_groups([1])
    young = f"{int(clock() * 1000)}-0"  # enqueued just now by the drainer's clock
    lead = validate_lead(email="young@x.com")
    await redis.xadd(
        drainer.keys.stream(1), {"k": key_digest(lead.key), "p": encode_lead(lead)}, id=young
    )
    await drainer.drain_together([0, 1])
    assert marketo.calls == [["due@x.com", "young@x.com"]]
    assert await statuses(drainer, [old]) == ["CREATED"]
    assert await statuses(drainer, [young], 1) == ["CREATED"]


async def test_a_single_shard_drain_still_waits_for_the_flush_interval(redis: Redis) -> None:
    marketo = Marketo(ok)
    drainer = make(redis, marketo, flush_interval_s=30.0)
    await enqueue(drainer, "young@x.com")
    report = await drainer.drain(0)
    assert report.status == "waiting"
    assert marketo.calls == []


async def test_young_partial_batches_that_fill_a_call_together_go_at_once(redis: Redis) -> None:
    """A full call is the best use of the quota: it does not wait for the flush
    interval, and its leftover waits for the next call instead of going half empty."""
    marketo = Marketo(ok)
    drainer = make(redis, marketo, shards=3, batch_size=4, flush_interval_s=30.0)
    first = await enqueue(drainer, "a0@x.com", "b0@x.com", shard=0)
    second = await enqueue(drainer, "a1@x.com", shard=1)
    third = await enqueue(drainer, "a2@x.com", "b2@x.com", shard=2)
    report = await drainer.drain_together([0, 1, 2])
    assert report.status == "sent"
    assert marketo.calls == [["a0@x.com", "b0@x.com", "a1@x.com", "a2@x.com"]]
    assert await statuses(drainer, first) == ["CREATED", "CREATED"]
    assert await statuses(drainer, second, 1) == ["CREATED"]
    assert await statuses(drainer, third, 2) == ["CREATED", None]
    report = await drainer.drain_together([0, 1, 2])
    assert report.status == "waiting", "the leftover is young and alone: it waits"
    assert len(marketo.calls) == 1


async def test_a_drain_waits_for_its_evenly_spaced_turn_instead_of_leaving(redis: Redis) -> None:
    """Grants are spaced one per (window + margin) / calls: the next turn is a fraction
    of a second away, so the drain waits for it with the call ready and sends every full
    batch in one drain, evenly spaced."""
    sent_at: list[float] = []

    def timed(emails: list[str | None]) -> HttpReply:
        sent_at.append(time.monotonic())
        return ok(emails)

    marketo = Marketo(timed)
    drainer = make(
        redis,
        marketo,
        batch_size=2,
        rate_limit_calls=20,
        rate_limit_window_s=1.0,
        rate_burst_calls=1,
    )
    await enqueue(drainer, *(f"p{i}@x.com" for i in range(6)))
    report = await drainer.drain(0)
    assert (report.status, report.calls) == ("sent", 3)
    interval_s = (1.0 + WINDOW_MARGIN_S) / 20
    assert min(b - a for a, b in itertools.pairwise(sent_at)) >= interval_s * 0.9


class SlowToGetReady:
    """A MarketoApi whose first ``ready()`` takes a while (REST waiting out a dying
    token) and records what the limiter held meanwhile; or whose ready() fails."""

    def __init__(self, api: MarketoApi, fail: Exception | None = None) -> None:
        self.api = api
        self.limiter: RedisLimiter | None = None  # the drainer's, once it is made
        self.fail = fail
        self.readies = 0
        self.slots_while_waiting: list[int] = []

    def prepare(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> PreparedCall:
        return self.api.prepare(leads, dedup=dedup)

    async def ready(self) -> str:
        self.readies += 1
        if self.fail is not None:
            raise self.fail
        if self.readies == 1:
            assert self.limiter is not None
            self.slots_while_waiting.append((await self.limiter.state()).slots_in_use)
            await asyncio.sleep(STALE_TURN_S * 2)  # never shorter than asked
        return await self.api.ready()

    async def send(
        self, call: PreparedCall, *, credential: str, fence: Fence = no_fence
    ) -> list[SyncResult]:
        return await self.api.send(call, credential=credential, fence=fence)


def slow_drainer(redis: Redis, marketo: Marketo, fail: Exception | None = None) -> Drainer:
    made: list[SlowToGetReady] = []

    def wrap(api: MarketoApi) -> MarketoApi:
        made.append(SlowToGetReady(api, fail))
        return made[0]

    drainer = make(redis, marketo, wrap_api=wrap)
    made[0].limiter = drainer.limiter
    return drainer


async def test_a_turn_taken_before_a_slow_ready_is_given_back_and_a_fresh_one_taken(
    redis: Redis,
) -> None:
    """A call that leaves seconds after its turn arrives together with every process
    that waited with it, past Marketo's window: the turn is given back (no call is
    counted that Marketo never saw) and the call goes on a fresh turn."""
    marketo = Marketo(ok)
    drainer = slow_drainer(redis, marketo)
    ids = await enqueue(drainer, "a@x.com", "b@x.com")
    report = await drainer.drain(0)
    api = drainer.api
    assert isinstance(api, SlowToGetReady)
    assert (report.status, report.calls, len(marketo.calls)) == ("sent", 1, 1)
    assert api.readies >= 2, "after the slow ready a fresh turn was taken, and ready asked again"
    assert api.slots_while_waiting == [1], "ready runs with the turn in hand"
    state = await drainer.limiter.state()
    assert (state.calls_in_window, state.quota_used_today, state.slots_in_use) == (1, 1, 0)
    assert await statuses(drainer, ids) == ["CREATED", "CREATED"]


async def test_a_ready_that_fails_gives_its_turn_back_and_sends_nothing(redis: Redis) -> None:
    marketo = Marketo(ok)
    drainer = slow_drainer(redis, marketo, fail=TransientError("identity call timed out"))
    ids = await enqueue(drainer, "a@x.com")
    report = await drainer.drain(0)
    assert report.status == "backoff"
    assert marketo.calls == []
    state = await drainer.limiter.state()
    assert (state.calls_in_window, state.quota_used_today, state.slots_in_use) == (0, 0, 0)
    assert await statuses(drainer, ids) == [None], "still pending"
