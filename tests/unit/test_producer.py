"""LeadProducer / AsyncLeadProducer over fakeredis: validation at the edge, routing,
bulk enqueue, outcome lookups and the shard-count handshake."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from producers import AsyncLeadProducer, InvalidLead, LeadProducer, Outcome, OutcomeStatus
from producers import _core as producer_module
from producers.contract import (
    Keys,
    decode_lead,
    encode_lead,
    entry_time_s,
    key_digest,
    lead_key,
    parse_request_id,
    shard_for,
    validate_lead,
)
from worker.errors import ConfigError

SHARDS = 8


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def producer(client: fakeredis.FakeRedis) -> LeadProducer:
    return LeadProducer(client, shards=SHARDS)


def total_entries(client: fakeredis.FakeRedis, keys: Keys, shards: int = SHARDS) -> int:
    return sum(client.xlen(keys.stream(s)) for s in range(shards))


def entry_of(client: fakeredis.FakeRedis, keys: Keys, rid: str) -> dict[bytes, bytes]:
    shard, entry_id = parse_request_id(rid)
    entries = client.xrange(keys.stream(shard), entry_id, entry_id)
    assert len(entries) == 1
    fields: dict[bytes, bytes] = entries[0][1]
    return fields


def commit(client: fakeredis.FakeRedis, keys: Keys, outcome: Outcome) -> None:
    """What the worker does: write the outcome hash and delete the entry, together."""
    shard, entry_id = parse_request_id(outcome.request_id)
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.outcome(shard, entry_id), mapping=outcome.to_fields())
    pipe.xdel(keys.stream(shard), entry_id)
    pipe.execute()


# --- validation at the edge -------------------------------------------------------------


@pytest.mark.parametrize(
    ("lead", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"marketo_id": 0}, "marketo_id"),
        ({"foreign_sys_person_id": "p-1"}, "foreign_sys_type"),
        ({"email": "a@example.com", "attributes": {"City": None}}, "attributes.City"),
        ({"email": "a@example.com", "attributes": {"Note": "bell\x07"}}, "attributes.Note"),
        ({}, "lead"),
    ],
)
def test_an_invalid_lead_raises_invalid_lead_naming_the_field_and_enqueues_nothing(
    producer: LeadProducer, client: fakeredis.FakeRedis, lead: dict[str, Any], field: str
) -> None:
    producer.upsert(email="before@example.com")

    with pytest.raises(InvalidLead) as caught:
        producer.upsert(**lead)

    assert caught.value.field == field
    assert total_entries(client, producer.keys) == 1


def test_invalid_lead_messages_do_not_echo_the_value(producer: LeadProducer) -> None:
    with pytest.raises(InvalidLead) as caught:
        producer.upsert(email="secret person@example.com")
    assert "secret" not in str(caught.value)


# --- what an entry looks like and where it goes -------------------------------------------


def test_upsert_appends_the_hashed_key_and_the_encoded_lead_to_the_key_shard(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    rid = producer.upsert(email=" Ann@Example.com ", attributes={"FirstName": "Ann", "Score": 3})

    lead = validate_lead(email="Ann@Example.com", attributes={"FirstName": "Ann", "Score": 3})
    shard, _ = parse_request_id(rid)
    assert shard == shard_for(lead_key(lead), SHARDS)
    fields = entry_of(client, producer.keys, rid)
    assert fields[b"k"].decode() == key_digest("email:ann@example.com")
    assert fields[b"p"].decode() == encode_lead(lead)
    assert decode_lead(fields[b"p"]) == lead
    assert b"ann@example.com" not in fields[b"k"]


def test_the_same_person_by_different_email_case_lands_on_the_same_shard_with_the_same_key(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    first = producer.upsert(email="Bob.Smith@Example.COM")
    second = producer.upsert(email="bob.smith@example.com ")

    assert parse_request_id(first)[0] == parse_request_id(second)[0]
    assert (
        entry_of(client, producer.keys, first)[b"k"]
        == entry_of(client, producer.keys, second)[b"k"]
    )


def test_the_marketo_id_outranks_the_email_when_choosing_the_shard(producer: LeadProducer) -> None:
    rid = producer.upsert(email="carol@example.com", marketo_id="4242")
    assert parse_request_id(rid)[0] == shard_for("id:4242", SHARDS)


def test_dedup_false_travels_in_the_payload(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    rid = producer.upsert(email="dan@example.com", dedup=False)
    assert decode_lead(entry_of(client, producer.keys, rid)[b"p"]).dedup is False


def test_leads_spread_over_every_shard(producer: LeadProducer) -> None:
    rids = producer.upsert_many({"email": f"user{i}@example.com"} for i in range(1000))
    shards = {parse_request_id(rid)[0] for rid in rids if isinstance(rid, str)}
    assert shards == set(range(SHARDS))


# --- upsert_many ---------------------------------------------------------------------


def test_upsert_many_enqueues_the_good_records_and_returns_the_error_of_the_bad_one(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    records: list[Any] = [
        {"email": "one@example.com"},
        {"email": "broken"},
        {"marketo_id": 17, "attributes": {"City": "Lyon"}},
        {"email": "two@example.com", "phone": "123"},
        "not a mapping",
        {"foreign_sys_person_id": "x-9", "foreign_sys_type": "sfdc"},
    ]

    results = producer.upsert_many(records)

    assert len(results) == len(records)
    assert [type(r) for r in results] == [str, InvalidLead, str, InvalidLead, InvalidLead, str]
    assert [r.field for r in results if isinstance(r, InvalidLead)] == ["email", "phone", "record"]
    assert total_entries(client, producer.keys) == 3
    third = results[2]
    assert isinstance(third, str)
    assert decode_lead(entry_of(client, producer.keys, third)[b"p"]).attributes == {"City": "Lyon"}


def test_upsert_many_keeps_record_order_across_chunks(
    producer: LeadProducer, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(producer_module, "BULK_CHUNK", 3)
    records = [{"email": f"p{i}@example.com"} if i % 4 else {"email": "bad"} for i in range(10)]

    results = producer.upsert_many(records)

    for i, result in enumerate(results):
        if i % 4 == 0:
            assert isinstance(result, InvalidLead)
        else:
            assert isinstance(result, str)
            payload = entry_of(client, producer.keys, result)[b"p"]
            assert decode_lead(payload).email == f"p{i}@example.com"
    assert total_entries(client, producer.keys) == 7


def test_upsert_many_of_only_bad_records_writes_nothing(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    assert all(isinstance(r, InvalidLead) for r in producer.upsert_many([{}, {"email": "x"}]))
    assert producer.upsert_many([]) == []
    assert total_entries(client, producer.keys) == 0


# --- outcomes ------------------------------------------------------------------------


def test_outcome_is_pending_with_the_enqueue_time_while_the_entry_waits(
    producer: LeadProducer,
) -> None:
    rid = producer.upsert(email="erin@example.com")

    outcome = producer.outcome(rid)

    assert outcome is not None
    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.request_id == rid
    assert outcome.enqueued_at == entry_time_s(parse_request_id(rid)[1])


def test_outcome_returns_what_the_worker_wrote(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    rid = producer.upsert(email="fay@example.com")
    written = Outcome(
        rid, OutcomeStatus.CREATED, lead_id=99, attempts=1, enqueued_at=5.0, finished_at=6.5
    )
    commit(client, producer.keys, written)

    assert producer.outcome(rid) == written


def test_outcome_fills_in_the_enqueue_time_when_the_worker_left_it_out(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    rid = producer.upsert(email="gus@example.com")
    commit(client, producer.keys, Outcome(rid, OutcomeStatus.FAILED, error="bad field", attempts=1))

    outcome = producer.outcome(rid)

    assert outcome is not None
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.error == "bad field"
    assert outcome.enqueued_at == entry_time_s(parse_request_id(rid)[1])


@pytest.mark.parametrize("rid", ["3-1700000000000-0", f"{SHARDS}-1-0", "not-an-id", "", "1-2"])
def test_outcome_of_an_unknown_or_malformed_request_is_none(
    producer: LeadProducer, rid: str
) -> None:
    producer.upsert(email="hal@example.com")
    assert producer.outcome(rid) is None


def test_wait_outcome_returns_the_final_outcome(
    producer: LeadProducer, client: fakeredis.FakeRedis
) -> None:
    rid = producer.upsert(email="ida@example.com")
    commit(client, producer.keys, Outcome(rid, OutcomeStatus.UPDATED, lead_id=7, attempts=1))

    assert producer.wait_outcome(rid, timeout_s=1.0).status is OutcomeStatus.UPDATED


def test_wait_outcome_returns_the_last_pending_outcome_when_time_runs_out(
    producer: LeadProducer,
) -> None:
    rid = producer.upsert(email="jo@example.com")

    outcome = producer.wait_outcome(rid, timeout_s=0.05, poll_s=0.01)

    assert outcome.status is OutcomeStatus.PENDING
    assert outcome.request_id == rid


def test_wait_outcome_raises_timeout_error_for_an_unknown_request(producer: LeadProducer) -> None:
    with pytest.raises(TimeoutError):
        producer.wait_outcome("0-1-0", timeout_s=0.02, poll_s=0.01)


# --- shard-count handshake and settings -------------------------------------------------


def test_the_first_producer_stores_its_shard_count(client: fakeredis.FakeRedis) -> None:
    producer = LeadProducer(client, shards=5)
    assert producer.shards == 5
    assert client.hget(Keys().config(), "shards") == b"5"


def test_a_later_producer_adopts_the_stored_shard_count(client: fakeredis.FakeRedis) -> None:
    LeadProducer(client, shards=5)
    later = LeadProducer(client, shards=11)

    assert later.shards == 5
    assert parse_request_id(later.upsert(marketo_id=123))[0] == shard_for("id:123", 5)


def test_shard_count_and_prefix_come_from_settings_when_not_passed(
    client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADSYNC_SHARDS", "3")
    monkeypatch.setenv("LEADSYNC_KEY_PREFIX", "tenant7")

    producer = LeadProducer(client)
    rid = producer.upsert(email="kim@example.com")

    assert producer.shards == 3
    assert producer.keys == Keys("tenant7")
    assert client.hget("tenant7:config", "shards") == b"3"
    assert client.xlen(Keys("tenant7").stream(parse_request_id(rid)[0])) == 1


def test_prefixes_keep_their_own_shard_counts(client: fakeredis.FakeRedis) -> None:
    assert LeadProducer(client, key_prefix="a", shards=2).shards == 2
    assert LeadProducer(client, key_prefix="b", shards=9).shards == 9


def test_a_corrupt_stored_shard_count_is_a_config_error(client: fakeredis.FakeRedis) -> None:
    client.hset(Keys().config(), "shards", "many")
    with pytest.raises(ConfigError):
        LeadProducer(client, shards=4)


def test_a_non_positive_shard_count_is_a_config_error(client: fakeredis.FakeRedis) -> None:
    with pytest.raises(ConfigError):
        LeadProducer(client, shards=0)


def test_close_leaves_a_borrowed_client_open(client: fakeredis.FakeRedis) -> None:
    with LeadProducer(client, shards=2) as producer:
        producer.upsert(email="lee@example.com")
    assert client.ping()


# --- the asyncio producer --------------------------------------------------------------


def test_async_from_url_does_no_io() -> None:
    # Port 1 refuses connections: any I/O here would raise.
    producer = AsyncLeadProducer.from_url("redis://127.0.0.1:1/0", shards=4)
    assert producer.keys == Keys()


async def test_async_producer_handshakes_on_first_use_and_adopts_the_stored_count(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis
) -> None:
    client.hset(Keys().config(), "shards", "6")
    producer = AsyncLeadProducer(fakeredis.FakeAsyncRedis(server=server), shards=4)

    rid = await producer.upsert(email="Mia@Example.com")

    assert await producer.shards() == 6
    assert parse_request_id(rid)[0] == shard_for("email:mia@example.com", 6)


async def test_async_producer_validates_enqueues_and_reports_outcomes(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis
) -> None:
    async with AsyncLeadProducer(
        fakeredis.FakeAsyncRedis(server=server), shards=SHARDS
    ) as producer:
        with pytest.raises(InvalidLead) as caught:
            await producer.upsert(marketo_id=-1)
        assert caught.value.field == "marketo_id"
        assert total_entries(client, producer.keys) == 0

        results = await producer.upsert_many([{"email": "ned@example.com"}, {"email": "?"}])
        rid = results[0]
        assert isinstance(rid, str)
        assert isinstance(results[1], InvalidLead)
        pending = await producer.outcome(rid)
        assert pending is not None
        assert pending.status is OutcomeStatus.PENDING
        assert (await producer.wait_outcome(rid, 0.02, poll_s=0.01)).status is OutcomeStatus.PENDING

        commit(client, producer.keys, Outcome(rid, OutcomeStatus.CREATED, lead_id=3, attempts=1))
        assert (await producer.wait_outcome(rid, 1.0)).lead_id == 3
        assert await producer.outcome("0-1-0") is None
        with pytest.raises(TimeoutError):
            await producer.wait_outcome("0-1-0", 0.02, poll_s=0.01)


def test_with_known_fields_an_unknown_attribute_is_refused_at_enqueue_by_name(
    client: fakeredis.FakeRedis,
) -> None:
    producer = LeadProducer(client, shards=SHARDS, known_fields=["FirstName", "Company"])
    rid = producer.upsert(email="ann@example.com", attributes={"firstname": "Ann"})
    assert rid
    with pytest.raises(InvalidLead) as refused:
        producer.upsert(email="bob@example.com", attributes={"Pants": "blue"})
    assert refused.value.field == "attributes.Pants"
    assert "blue" not in str(refused.value)
    results = producer.upsert_many(
        [
            {"email": "cat@example.com", "attributes": {"Company": "C"}},
            {"email": "dan@example.com", "attributes": {"Shoes": "red"}},
        ]
    )
    assert isinstance(results[0], str)
    assert isinstance(results[1], InvalidLead)
    assert results[1].field == "attributes.Shoes"
    assert total_entries(client, producer.keys) == 2


def test_known_fields_come_from_the_environment_when_not_given(
    client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADSYNC_KNOWN_FIELDS", "FirstName, LastName")
    producer = LeadProducer(client, shards=SHARDS)
    with pytest.raises(InvalidLead):
        producer.upsert(email="ann@example.com", attributes={"Title": "CTO"})
    monkeypatch.delenv("LEADSYNC_KNOWN_FIELDS")
    assert LeadProducer(client, shards=SHARDS).upsert(
        email="ann@example.com", attributes={"Title": "CTO"}
    )
