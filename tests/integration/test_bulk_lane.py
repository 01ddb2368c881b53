"""The bulk lane on real Redis, with the drain run in-process: a lead's bulk and live
writes keep their order whichever lane a drain serves first, bulk never goes while a
live entry of its shard waits, and its calls count in their own budget."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from producers import AsyncLeadProducer, InvalidLead
from producers.contract import Keys, parse_request_id
from tests.integration.test_dead_letters import FieldMarketo
from tests.support.drain_kit import Marketo, make, ok
from tests.support.outcomes import status_of
from worker.drain import Drainer
from worker.transport import MockTransport

pytestmark = pytest.mark.integration

LIVE, BULK = 0, 1  # one shard: its live stream and its bulk stream


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def setup(
    client: redis.asyncio.Redis, **overrides: object
) -> tuple[Drainer, FieldMarketo, AsyncLeadProducer]:
    marketo = FieldMarketo()
    marketo.failing = False
    drainer = make(client, Marketo(ok), **overrides)
    drainer.api.transport = MockTransport(marketo)  # type: ignore[attr-defined]
    await drainer.ledger.agree_shards(1)
    await drainer.ledger.ensure_groups(2)
    producer = AsyncLeadProducer(client, shards=1, known_fields=())
    return drainer, marketo, producer


async def test_a_bulk_write_never_reverts_the_fields_of_a_newer_live_write(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo, producer = await setup(client)
    older = await producer.upsert(
        email="ann@example.com", attributes={"Company": "Old", "City": "Paris"}, lane="bulk"
    )
    assert parse_request_id(older)[0] == BULK
    newer = await producer.upsert(email="ann@example.com", attributes={"Company": "New"})
    assert parse_request_id(newer)[0] == LIVE

    report = await drainer.drain(BULK)
    assert report.calls == 0, "bulk waits while a live entry of its shard waits"
    await drainer.drain(LIVE)
    await drainer.drain(BULK)

    assert marketo.leads["ann@example.com"] == {"Company": "New", "City": "Paris"}
    assert marketo.sent[-1] == [{"City": "Paris"}], "only the field no newer write set"
    for rid in (older, newer):
        assert await status_of(client, Keys(), rid) in ("CREATED", "UPDATED")
    marks = await client.keys("leadsync:{0}:fields:*")
    assert marks == [], "the lead's bulk mark goes with its last bulk write"


async def test_a_bulk_write_newer_than_a_waiting_live_write_goes_after_it(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo, producer = await setup(client)
    await producer.upsert(email="bo@example.com", attributes={"Company": "Live"})
    await producer.upsert(email="bo@example.com", attributes={"Company": "Bulk"}, lane="bulk")

    await drainer.drain(BULK)  # refused: the older live write waits
    assert marketo.sent == []
    await drainer.drain(LIVE)
    await drainer.drain(BULK)
    assert marketo.sent == [[{"Company": "Live"}], [{"Company": "Bulk"}]]
    assert marketo.leads["bo@example.com"] == {"Company": "Bulk"}


async def test_bulk_calls_count_in_their_own_budget_and_stop_at_it(
    client: redis.asyncio.Redis,
) -> None:
    drainer, marketo, producer = await setup(client, bulk_daily_calls=0)
    await producer.upsert_many([{"email": f"p{i}@example.com"} for i in range(3)], lane="bulk")
    report = await drainer.drain(BULK)
    assert (report.status, report.reason) == ("limited", "bulk_budget")
    await producer.upsert(email="live@example.com")
    await drainer.drain(LIVE)
    assert [list(r) for r in marketo.sent] == [[{}]]
    state = await drainer.limiter.state()
    assert (state.quota_used_today, state.bulk_used_today) == (1, 0)


async def test_bulk_calls_spend_the_bulk_budget_not_the_quota_share(
    client: redis.asyncio.Redis,
) -> None:
    drainer, _marketo, producer = await setup(client, bulk_daily_calls=1000)
    await producer.upsert_many([{"email": f"p{i}@example.com"} for i in range(3)], lane="bulk")
    report = await drainer.drain(BULK)
    assert report.calls == 1
    state = await drainer.limiter.state()
    assert (state.quota_used_today, state.bulk_used_today) == (0, 1)


async def test_a_lane_that_does_not_exist_is_refused_before_anything_is_written(
    client: redis.asyncio.Redis,
) -> None:
    _drainer, _marketo, producer = await setup(client)
    with pytest.raises(InvalidLead) as refused:
        await producer.upsert(email="x@example.com", lane="fast")  # type: ignore[arg-type]
    assert refused.value.field == "lane"


async def test_a_parked_bulk_write_leaves_the_leads_mark_alive_while_another_waits(
    client: redis.asyncio.Redis,
) -> None:
    """Parking sets the written-fields record's expiry (the dead letters' TTL); while a
    bulk write of the lead still waits, it must not expire before that write goes, or
    newer live writes would stop being recorded and the bulk write could revert them."""
    drainer, marketo, producer = await setup(client, max_attempts=1, transient_retries=0)
    marketo.failing = True
    await producer.upsert(email="cy@example.com", attributes={"City": "A"}, lane="bulk")
    await drainer.drain(BULK)  # the call fails: its one attempt is spent
    await producer.upsert(email="cy@example.com", attributes={"City": "B"}, lane="bulk")
    await drainer.drain(BULK)  # the first is parked; the second waits (and fails once)
    (mark,) = await client.keys("leadsync:{0}:fields:*")
    assert await client.hget(mark, "~parked") == b"1"
    assert await client.hget(mark, "~bulk") == b"1"
    assert await client.ttl(mark) == -1, "no expiry while a bulk write of the lead waits"
