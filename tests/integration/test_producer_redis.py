"""LeadProducer and AsyncLeadProducer against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from producers import (
    AsyncLeadProducer,
    InvalidLead,
    LeadProducer,
    Outcome,
    OutcomeStatus,
    Ticket,
)
from producers.contract import (
    Keys,
    decode_lead,
    key_digest,
    lead_key,
    parse_request_id,
    shard_for,
    validate_lead,
)

pytestmark = pytest.mark.integration

SHARDS = 4


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client: redis.Redis = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def total_entries(client: redis.Redis, keys: Keys) -> int:
    return sum(client.xlen(keys.stream(s)) for s in range(SHARDS))


def commit(client: redis.Redis, keys: Keys, outcome: Outcome) -> None:
    """The worker's commit: outcome hash and XDEL of the entry in one MULTI (one hash slot)."""
    shard, entry_id = parse_request_id(outcome.request_id)
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.outcome(shard, entry_id), mapping=outcome.to_fields())
    pipe.xdel(keys.stream(shard), entry_id)
    pipe.execute()


def test_upsert_outcome_and_validation_over_real_redis(redis_url: str, client: redis.Redis) -> None:
    with LeadProducer.from_url(redis_url, shards=SHARDS) as producer:
        with pytest.raises(InvalidLead) as caught:
            producer.upsert(email="no-at-sign")
        assert caught.value.field == "email"
        assert total_entries(client, producer.keys) == 0

        rid = producer.upsert(email="Ann@Example.com", attributes={"FirstName": "Ann"})
        shard, entry_id = parse_request_id(rid)
        assert shard == shard_for("email:ann@example.com", SHARDS)
        [(stored_id, fields)] = client.xrange(producer.keys.stream(shard))
        assert stored_id.decode() == entry_id
        assert fields[b"k"].decode() == key_digest("email:ann@example.com")
        assert decode_lead(fields[b"p"]).attributes == {"FirstName": "Ann"}

        pending = producer.outcome(rid)
        assert pending is not None
        assert pending.status is OutcomeStatus.PENDING
        assert producer.wait_outcome(rid, 0.05, poll_s=0.01).status is OutcomeStatus.PENDING

        commit(client, producer.keys, Outcome(rid, OutcomeStatus.CREATED, lead_id=11, attempts=1))
        final = producer.wait_outcome(rid, 2.0)
        assert (final.status, final.lead_id) == (OutcomeStatus.CREATED, 11)

        assert producer.outcome("1-1-0") is None
        with pytest.raises(TimeoutError):
            producer.wait_outcome("1-1-0", 0.03, poll_s=0.01)


def test_upsert_many_enqueues_the_good_records_over_real_redis(
    redis_url: str, client: redis.Redis
) -> None:
    records = [{"email": f"lead{i}@example.com"} for i in range(2500)]
    records[1234] = {"email": "broken"}

    with LeadProducer.from_url(redis_url, shards=SHARDS) as producer:
        results = producer.upsert_many(records)

    bad = [i for i, r in enumerate(results) if isinstance(r, InvalidLead)]
    assert bad == [1234]
    assert total_entries(client, producer.keys) == 2499
    ids = [r for r in results if isinstance(r, str)]
    assert len(set(ids)) == 2499


def test_a_worker_group_created_later_sees_the_whole_backlog(
    redis_url: str, client: redis.Redis
) -> None:
    with LeadProducer.from_url(redis_url, shards=SHARDS) as producer:
        rid = producer.upsert(marketo_id=77)
    shard, entry_id = parse_request_id(rid)
    stream = producer.keys.stream(shard)

    client.xgroup_create(stream, Keys.GROUP, id="0", mkstream=True)
    [(_, entries)] = client.xreadgroup(Keys.GROUP, "w1", {stream: ">"}, count=10)

    assert [eid.decode() for eid, _ in entries] == [entry_id]


def test_a_second_producer_with_another_shard_count_adopts_the_stored_one(
    redis_url: str, client: redis.Redis
) -> None:
    with LeadProducer.from_url(redis_url, key_prefix="hs", shards=SHARDS) as first:
        assert first.shards == SHARDS
    with LeadProducer.from_url(redis_url, key_prefix="hs", shards=SHARDS * 2) as second:
        assert second.shards == SHARDS
        rid = second.upsert(marketo_id=9001)
    assert parse_request_id(rid)[0] == shard_for("id:9001", SHARDS)
    assert client.hget("hs:config", "shards") == str(SHARDS).encode()


async def test_async_producer_over_real_redis(redis_url: str, client: redis.Redis) -> None:
    client.hset(Keys().config(), "shards", str(SHARDS))
    async with AsyncLeadProducer.from_url(redis_url, shards=SHARDS * 3) as producer:
        with pytest.raises(InvalidLead) as caught:
            await producer.upsert(email="a@example.com", foreign_sys_type="SFDC")
        assert caught.value.field == "foreign_sys_person_id"

        rid = await producer.upsert(email="Bea@Example.com")
        assert await producer.shards() == SHARDS
        assert parse_request_id(rid)[0] == shard_for("email:bea@example.com", SHARDS)

        results = await producer.upsert_many([{"email": "c@example.com"}, {"marketo_id": "x"}])
        assert isinstance(results[0], str)
        assert isinstance(results[1], InvalidLead)
        assert results[1].field == "marketo_id"
        assert total_entries(client, producer.keys) == 2

        pending = await producer.outcome(rid)
        assert pending is not None
        assert pending.status is OutcomeStatus.PENDING

        commit(
            client, producer.keys, Outcome(rid, OutcomeStatus.FAILED, error="rejected", attempts=1)
        )
        final = await producer.wait_outcome(rid, 2.0)
        assert (final.status, final.error) == (OutcomeStatus.FAILED, "rejected")
        assert await producer.outcome("0-5-5") is None


async def test_a_rest_workers_key_rule_orders_id_and_email_writes_of_one_lead_together(
    redis_url: str, client: redis.Redis
) -> None:
    """F4 over real Redis: a REST worker stores its key rule at start; a producer that
    reads it keys both writes by the email Marketo matches on (one shard, one key)."""
    import redis.asyncio

    from worker.ledger import Ledger
    from worker.settings import Settings

    settings = Settings(
        marketo_api="rest",
        marketo_rest_url="https://123-ABC-456.mktorest.com",
        marketo_client_id="id",
        marketo_client_secret="secret",
    )
    worker_redis = redis.asyncio.Redis.from_url(redis_url)
    try:
        await Ledger.for_settings(worker_redis, settings).store_key_rule(settings.key_rule)
    finally:
        await worker_redis.aclose()
    producer = LeadProducer.from_url(redis_url)  # its own environment says soap
    try:
        first = producer.upsert(marketo_id=5, email="ann@example.com")
        second = producer.upsert(email="Ann@Example.com")
        with pytest.raises(InvalidLead, match="email"):
            producer.upsert(marketo_id=9)
    finally:
        producer.close()
    (s1, e1), (s2, e2) = parse_request_id(first), parse_request_id(second)
    assert s1 == s2
    keys = Keys()
    (entry1,) = client.xrange(keys.stream(s1), e1, e1)
    (entry2,) = client.xrange(keys.stream(s2), e2, e2)
    assert entry1[1][b"k"] == entry2[1][b"k"] == key_digest("email:ann@example.com").encode()


def test_a_producer_places_by_the_key_rule_a_worker_stored_since_it_agreed(
    redis_url: str, client: redis.Redis
) -> None:
    """A worker stored the REST rule (the lookup field's value is the key) after this
    producer agreed on the SOAP rule, within its 60 s between looks: the enqueue step
    refuses (REKEYED, nothing written) and the producer places the lead again by the
    stored rule, so an id-carrying write and an email-only write of one person share a
    key, a shard and an order, as Marketo matches them."""
    keys = Keys()
    with LeadProducer.from_url(redis_url, shards=4) as producer:
        producer.upsert(email="warm@example.com")  # agreed: no rule stored, SOAP's
        client.hset(keys.config(), "key_rule", "rest:email")
        with_id = producer.upsert(email="ann@example.com", marketo_id=5)
        (batch_id,) = producer.upsert_many([{"email": "ANN@example.com", "marketo_id": 6}])
    expected = key_digest(lead_key(validate_lead(email="ann@example.com"), "rest:email"))
    assert expected != key_digest(lead_key(validate_lead(email="a@x.com", marketo_id=5)))
    for request_id in (with_id, batch_id):
        assert isinstance(request_id, str)
        shard, entry_id = parse_request_id(request_id)
        assert shard == shard_for(lead_key(validate_lead(email="ann@example.com"), "rest:email"), 4)
        ((_, fields),) = client.xrange(keys.stream(shard), entry_id, entry_id)
        assert fields[b"k"].decode() == expected


def test_a_ticketed_step_sent_again_is_answered_not_written_twice(
    redis_url: str, client: redis.Redis
) -> None:
    keys = Keys()
    records = [{"email": f"t{n}@example.com"} for n in range(5)] + [{"email": "bad"}]
    with LeadProducer.from_url(redis_url, shards=4) as producer:
        first = producer.upsert_many(records, ticket=Ticket("journal", "2-7-6"))
        again = producer.upsert_many(records, ticket=Ticket("journal", "2-7-6"))
        assert total_entries(client, keys) == 5
        assert again[:5] == first[:5], "the same request ids, nothing written"
        assert isinstance(again[5], InvalidLead)
        other = producer.upsert_many(records[:2], ticket=Ticket("journal", "8-9-2"))
        assert total_entries(client, keys) == 7, "another step is written"
        assert set(other).isdisjoint(first)
        with pytest.raises(ValueError, match="one step"):
            producer.upsert_many(
                [{"email": f"m{n}@example.com"} for n in range(1001)], ticket=Ticket("j", "x")
            )
    assert client.pttl(keys.ticket("journal")) > 29 * 86_400_000, "kept 30 days"
