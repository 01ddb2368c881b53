"""Dead letters on real Redis: park, list without lead values, replay, and the ORIGINAL
request id ends with the replayed entry's outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from typer.testing import CliRunner

from marketo_sim.config import SimConfig
from producers.contract import (
    Keys,
    OutcomeStatus,
    request_id,
)
from producers.producer import LeadProducer
from tests.support.drain_kit import Marketo, enqueue, fault, make, ok
from tests.support.pipeline import running_pipeline
from worker.cli import app
from worker.drain import Drainer
from worker.ops.dead_letters import list_dead_letters, list_page, replay

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
    shard, entry_id = rid.split("-", 1)
    value = await client.hget(Keys().outcome(int(shard), entry_id), "status")
    return value.decode() if value else None


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


async def test_replay_leaves_an_entry_parked_when_a_newer_upsert_of_the_lead_went_through(
    client: redis.asyncio.Redis,
) -> None:
    marketo = switch()
    drainer = drainer_for(client, marketo)
    old = await enqueue_one(drainer, "ann@example.com", company="Old")
    await cycles(drainer)
    marketo.behaviours = [ok]
    newer = await enqueue_one(drainer, "ann@example.com", company="New")
    await cycles(drainer, 1)
    assert await status_of(client, newer) == "CREATED"

    letters = await list_dead_letters(client, drainer.keys, 1)
    report = await replay(client, drainer.keys, letters, result_ttl_s=3600)
    assert report.superseded == [old]
    assert report.replayed == 0
    assert await client.xlen(drainer.keys.dead_letters(0)) == 1, "still parked"

    forced = await replay(client, drainer.keys, letters, result_ttl_s=3600, force=True)
    assert forced.replayed == 1
    again = await replay(client, drainer.keys, letters, result_ttl_s=3600, force=True)
    assert again.gone == 1, "a record is replayed once"


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
