"""Dead letters on real Redis: park, list without lead values, replay, and the ORIGINAL
request id ends with the replayed entry's outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest
import redis.asyncio
from typer.testing import CliRunner

from marketo_sim.config import SimConfig
from marketo_sim.soap import parse_request_bytes
from producers.contract import (
    Keys,
    OutcomeStatus,
    parse_request_id,
    request_id,
)
from producers.producer import LeadProducer
from tests.support.drain_kit import Marketo, enqueue, fault, make, ok
from tests.support.outcomes import status_of as stored_status
from tests.support.outcomes import stored
from tests.support.pipeline import running_pipeline
from worker.cli import app
from worker.drain import Drainer
from worker.errors import TransportError
from worker.ops.dead_letters import list_dead_letters, list_page, replay
from worker.transport import HttpReply, MockTransport

pytestmark = pytest.mark.integration


def switch() -> Marketo:
    """A Marketo that faults 10001 until ``behaviours`` is set to ``[ok]``."""
    return Marketo(fault(10001))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


def drainer_for(client: redis.asyncio.Redis, marketo: Marketo) -> Drainer:
    """Every fault parks the entries: one attempt, no in-cycle retry."""
    return make(client, marketo, max_attempts=1, transient_retries=0)


async def enqueue_one(drainer: Drainer, email: str, company: str = "A") -> str:
    (entry_id,) = await enqueue(drainer, email, Company=company)
    return request_id(0, entry_id)


async def cycles(drainer: Drainer, n: int = 2) -> None:
    """Drain ``n`` times (a drain does not wait out the shard's rest: only the tick does)."""
    for _ in range(n):
        await drainer.drain(0)


async def status_of(client: redis.asyncio.Redis, rid: str) -> str | None:
    return await stored_status(client, Keys(), rid)


async def test_an_entry_dead_lettered_twice_still_answers_its_original_request_after_replay(
    client: redis.asyncio.Redis,
) -> None:
    marketo = switch()
    drainer = drainer_for(client, marketo)
    rid = await enqueue_one(drainer, "ann@example.com")
    await cycles(drainer)
    assert await status_of(client, rid) == OutcomeStatus.DEAD_LETTERED.value

    for _round in range(2):
        letters = await list_dead_letters(client, drainer.keys, 1)
        assert [d.request_id for d in letters] == [rid], "the DLQ names the original request"
        report = await replay(client, drainer.keys, letters, result_ttl_s=3600)
        assert report.replayed == 1
        assert await status_of(client, rid) == OutcomeStatus.PENDING.value
        if _round == 0:  # still faulting: parked again, the original follows
            await cycles(drainer)
            assert await status_of(client, rid) == OutcomeStatus.DEAD_LETTERED.value

    marketo.behaviours = [ok]
    await cycles(drainer, 1)
    assert await status_of(client, rid) == OutcomeStatus.CREATED.value
    assert await client.xlen(drainer.keys.dead_letters(0)) == 0
    assert await client.xlen(drainer.keys.stream(0)) == 0


async def test_a_request_the_previous_version_parked_is_replayed_and_answered(
    client: redis.asyncio.Redis,
) -> None:
    """Upgrade: a DEAD_LETTERED outcome stored as the previous version's hash per request
    is replayed (back to PENDING, in the new form) and answered; the old hash goes."""
    marketo = switch()
    drainer = drainer_for(client, marketo)
    rid = await enqueue_one(drainer, "old@example.com")
    await cycles(drainer)
    shard, entry_id = parse_request_id(rid)
    parked = await stored(client, drainer.keys, rid)
    assert parked is not None
    assert parked.status is OutcomeStatus.DEAD_LETTERED
    bucket, field = drainer.keys.outcome_slot(shard, entry_id)
    await client.hdel(bucket, field)  # as the previous version stored it:
    await client.hset(drainer.keys.outcome(shard, entry_id), mapping=parked.to_fields())
    assert await status_of(client, rid) == OutcomeStatus.DEAD_LETTERED.value

    report = await replay(
        client, drainer.keys, await list_dead_letters(client, drainer.keys, 1), result_ttl_s=60
    )
    assert report.replayed == 1
    assert await client.exists(drainer.keys.outcome(shard, entry_id)) == 0
    assert await status_of(client, rid) == OutcomeStatus.PENDING.value
    marketo.behaviours = [ok]
    await cycles(drainer, 1)
    assert await status_of(client, rid) == OutcomeStatus.CREATED.value


class FieldMarketo:
    """A Marketo that keeps each lead's fields (merged per field, as an upsert does) and
    faults 10001 while ``failing``; ``sent`` holds every call's records' fields."""

    def __init__(self) -> None:
        self.failing = True
        self.leads: dict[str, dict[str, str]] = {}
        self.sent: list[list[dict[str, str]]] = []

    def __call__(self, body: bytes, _headers: object) -> HttpReply:
        records = parse_request_bytes(body).records
        if self.failing:
            return fault(10001)([r.email for r in records])
        self.sent.append([{a.name: a.value for a in r.attributes} for r in records])
        for record in records:
            assert record.email is not None
            self.leads.setdefault(record.email, {}).update(
                {a.name: a.value for a in record.attributes}
            )
        return ok([r.email for r in records])


def field_drainer(client: redis.asyncio.Redis) -> tuple[Drainer, FieldMarketo]:
    marketo = FieldMarketo()
    drainer = drainer_for(client, Marketo(ok))
    drainer.api.transport = MockTransport(marketo)  # type: ignore[attr-defined]
    return drainer, marketo


async def write(drainer: Drainer, email: str, **fields: str) -> str:
    (entry_id,) = await enqueue(drainer, email, **fields)
    return request_id(0, entry_id)


async def test_a_replay_sends_the_fields_no_newer_write_set_and_ends_terminal(
    client: redis.asyncio.Redis,
) -> None:
    """Issue 18 / F5: write 1 {Company: Old, City: OldCity} parked, write 2 {Company: New}
    applied; the replay refused write 1 as superseded, so City never arrived and write 1
    stayed DEAD_LETTERED for good."""
    drainer, marketo = field_drainer(client)
    first = await write(drainer, "ann@example.com", Company="Old", City="OldCity")
    await cycles(drainer)
    assert await status_of(client, first) == "DEAD_LETTERED"
    marketo.failing = False
    second = await write(drainer, "ann@example.com", Company="New")
    await cycles(drainer, 1)
    assert await status_of(client, second) == "CREATED"

    report = await replay(
        client, drainer.keys, await list_dead_letters(client, drainer.keys, 1), result_ttl_s=3600
    )
    assert (report.replayed, report.superseded) == (1, [])
    await cycles(drainer, 1)
    assert marketo.leads["ann@example.com"] == {"Company": "New", "City": "OldCity"}
    assert marketo.sent[-1] == [{"City": "OldCity"}], "the newer Company is never reverted"
    assert await status_of(client, first) in ("CREATED", "UPDATED")
    assert await client.xlen(drainer.keys.dead_letters(0)) == 0


async def test_a_leads_parked_writes_replay_together_in_write_order(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo = field_drainer(client)
    ids = [
        await write(drainer, "bo@example.com", Phone="1", Company="A"),
        await write(drainer, "bo@example.com", Company="B"),
    ]
    await cycles(drainer)
    assert [await status_of(client, rid) for rid in ids] == ["DEAD_LETTERED"] * 2
    marketo.failing = False
    # Only one of them is chosen (--limit 1): the lead's other parked write comes along.
    (one,) = await list_dead_letters(client, drainer.keys, 1, limit=1)
    report = await replay(client, drainer.keys, [one], result_ttl_s=3600)
    assert report.replayed == 2
    await cycles(drainer, 1)
    assert marketo.sent == [[{"Phone": "1", "Company": "B"}]], "one call, the newer Company wins"
    assert {await status_of(client, rid) for rid in ids} <= {"CREATED", "UPDATED"}


async def test_a_write_every_field_of_which_was_set_since_ends_superseded_not_parked(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo = field_drainer(client)
    old = await write(drainer, "cy@example.com", Company="Old")
    await cycles(drainer)
    marketo.failing = False
    await write(drainer, "cy@example.com", Company="New")
    await cycles(drainer, 1)

    letters = await list_dead_letters(client, drainer.keys, 1)
    report = await replay(client, drainer.keys, letters, result_ttl_s=3600)
    assert (report.superseded, report.replayed) == ([old], 0)
    outcome = await stored(client, Keys(), old)
    assert outcome is not None
    assert (outcome.status, outcome.error_code) == ("FAILED", "SUPERSEDED")
    assert await client.xlen(drainer.keys.dead_letters(0)) == 0, "terminal, not parked"
    await cycles(drainer, 1)
    assert marketo.leads["cy@example.com"] == {"Company": "New"}


async def test_force_replays_every_field_and_names_what_it_may_revert(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo = field_drainer(client)
    old = await write(drainer, "di@example.com", Company="Old", City="Rome")
    await cycles(drainer)
    marketo.failing = False
    await write(drainer, "di@example.com", Company="New")
    await cycles(drainer, 1)

    letters = await list_dead_letters(client, drainer.keys, 1)
    forced = await replay(client, drainer.keys, letters, result_ttl_s=3600, force=True)
    assert forced.replayed == 1
    assert forced.may_revert == {old: ["Company"]}
    again = await replay(client, drainer.keys, letters, result_ttl_s=3600, force=True)
    assert again.gone == 1, "a record is replayed once"
    await cycles(drainer, 1)
    assert marketo.leads["di@example.com"] == {"Company": "Old", "City": "Rome"}


async def test_a_newer_write_still_waiting_is_not_reverted_by_a_replay(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo = field_drainer(client)
    await write(drainer, "ed@example.com", Company="Old", City="Oslo")
    await cycles(drainer)
    marketo.failing = False
    newer = await write(drainer, "ed@example.com", Company="New")  # not yet drained
    await replay(
        client, drainer.keys, await list_dead_letters(client, drainer.keys, 1), result_ttl_s=3600
    )
    await cycles(drainer, 1)
    assert marketo.leads["ed@example.com"] == {"Company": "New", "City": "Oslo"}
    assert await status_of(client, newer) == "CREATED"


def test_dlq_list_and_replay_round_trip_through_a_real_worker(redis_url: str) -> None:
    env = {
        "LEADSYNC_MAX_ATTEMPTS": "1",
        "LEADSYNC_TRANSIENT_RETRIES": "0",
        "LEADSYNC_BACKOFF_INITIAL_S": "0.05",
        "LEADSYNC_BACKOFF_MAX_S": "0.1",
    }
    sim_config = SimConfig(fault_internal_10001_rate=1.0)
    with running_pipeline(redis_url, sim_config=sim_config, settings_env=env, shards=2) as pipe:
        emails = [f"dead{i}@example.com" for i in range(5)]
        ids = [str(r) for r in pipe.producer.upsert_many([{"email": e} for e in emails])]
        pipe.start_worker(concurrency=1)
        parked = pipe.wait_all(ids, timeout_s=60)
        assert {o.status for o in parked.values() if o} == {OutcomeStatus.DEAD_LETTERED}

        runner = CliRunner()
        wide = {**pipe.env, "COLUMNS": "250"}
        listed = runner.invoke(app, ["dlq", "list", "--code", "MAX_ATTEMPTS"], env=wide)
        assert listed.exit_code == 0, listed.output
        assert all(rid in listed.output for rid in ids), listed.output
        assert "@example.com" not in listed.output, "no lead values on screen"

        pipe.sim.admin.configure(fault_internal_10001_rate=0.0)
        replayed = runner.invoke(app, ["dlq", "replay", "--code", "MAX_ATTEMPTS"], env=wide)
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 5" in replayed.output
        final = pipe.wait_all(ids, timeout_s=60)

    assert {rid: o.status if o else None for rid, o in final.items()} == dict.fromkeys(
        ids, OutcomeStatus.CREATED
    )


def test_the_producer_reads_a_replayed_request_as_pending(redis_url: str) -> None:
    import asyncio

    async def park_and_replay() -> str:
        connection = redis.asyncio.Redis.from_url(redis_url)
        try:
            drainer = drainer_for(connection, switch())
            rid = await enqueue_one(drainer, "bob@example.com")
            await cycles(drainer)
            letters = await list_dead_letters(connection, drainer.keys, 1)
            await replay(connection, drainer.keys, letters, result_ttl_s=3600)
            return rid
        finally:
            await connection.aclose()

    rid = asyncio.run(park_and_replay())
    with LeadProducer.from_url(redis_url, shards=1) as producer:
        outcome = producer.outcome(rid)
    assert outcome is not None
    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.attempts == 0


async def test_dead_letters_are_listed_a_page_at_a_time_across_shards(
    client: redis.asyncio.Redis,
) -> None:
    drainer = drainer_for(client, switch())
    await drainer.ledger.ensure_groups(2)
    for shard in (0, 1):
        await enqueue(drainer, *(f"p{shard}{i}@x.com" for i in range(3)), shard=shard)
        for _ in range(2):
            await drainer.drain(shard)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await list_page(client, drainer.keys, 2, limit=2, cursor=cursor)
        pages += 1
        seen += [letter.request_id for letter in page.letters]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert pages in (3, 4)
    assert [rid.split("-")[0] for rid in seen] == ["0"] * 3 + ["1"] * 3


class Unreachable:
    """A transport whose Marketo is down: every post fails before the request leaves
    (connection refused) while ``down``; then the handler answers."""

    def __init__(self, handler: Marketo) -> None:
        self.down = True
        self.inner = MockTransport(handler)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        if self.down:
            raise TransportError("HTTP exchange with marketo.test failed: connection refused")
        return await self.inner.post(url, body, headers)

    async def get(self, url: str, headers: Mapping[str, str]) -> HttpReply:
        return await self.post(url, b"", headers)

    async def close(self) -> None:
        return None


async def test_an_outage_before_the_request_leaves_costs_no_attempt_and_parks_nothing(
    client: redis.asyncio.Redis,
) -> None:
    """Marketo unreachable for many more cycles than LEADSYNC_MAX_ATTEMPTS: no record was
    tried, so none spends an attempt; the leads wait, and go once Marketo is back."""
    drainer = make(client, Marketo(ok), max_attempts=2, transient_retries=0)
    transport = Unreachable(Marketo(ok))
    drainer.api.transport = transport  # type: ignore[attr-defined]
    rid = await enqueue_one(drainer, "ann@example.com")
    for _ in range(6):
        await client.delete(drainer.keys.rest(0))  # its rest over, as if time had passed
        report = await drainer.drain(0)
        assert report.status == "backoff"
    assert await client.xlen(drainer.keys.dead_letters(0)) == 0
    entry_id = rid.split("-", 1)[1]
    assert await drainer.ledger.attempts(0, [entry_id]) == [0], "no attempt spent"
    assert await status_of(client, rid) is None  # still waiting

    transport.down = False
    await client.delete(drainer.keys.rest(0))
    await drainer.drain(0)
    assert await status_of(client, rid) == OutcomeStatus.CREATED.value
