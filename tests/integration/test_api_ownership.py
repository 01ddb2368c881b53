"""Outcomes are readable only by the API key that enqueued them (or a ``read:all`` key),
and request ids cannot be enumerated: another key's id, an id stripped of its tag or one
with a wrong tag is answered exactly like an unknown id (404, or null in a list)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from producers import AsyncLeadProducer
from producers.contract import Keys, Outcome, OutcomeStatus, parse_request_id
from tests.support.api_kit import SHARDS, Api, running_api
from worker.api import request_ids
from worker.api.auth import KeyStore

pytestmark = pytest.mark.integration

LEAD = {"email": "ann@example.com"}


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Api]:
    async with running_api(redis_url) as running:
        yield running


async def enqueue(api: Api, key: str, n: int = 1) -> list[str]:
    records = [{"email": f"u{i}@example.com"} for i in range(n)]
    answer = await api.call("POST", "/v1/leads:batch", key=key, json_body={"records": records})
    return [result["request_id"] for result in answer.body["results"]]


async def test_an_id_is_read_by_its_key_and_is_unknown_to_another(api: Api) -> None:
    shop, crm = await api.key("shop", "write", "read"), await api.key("crm", "write", "read")
    rid = (await api.call("POST", "/v1/leads", key=shop, json_body=LEAD)).body["request_id"]
    plain, tag = request_ids.split(rid)
    assert tag is not None
    assert len(tag) == 2 * request_ids.TAG_BYTES
    assert (await api.call("GET", f"/v1/leads/{rid}", key=shop)).status == 200
    theirs = await api.call("GET", f"/v1/leads/{rid}", key=crm)
    unknown = await api.call("GET", "/v1/leads/0-1-0.00000000000000000000000000000000", key=crm)
    assert theirs.status == unknown.status == 404
    assert theirs.body == unknown.body  # the same answer: existence is not revealed
    # Enumerating plain ids, or guessing tags, finds nothing.
    for guess in (plain, f"{plain}.", f"{plain}.{'0' * 32}", f"{plain}.{tag[:-1]}", f"{rid}x"):
        assert (await api.call("GET", f"/v1/leads/{guess}", key=shop)).status == 404
    many = await api.call("GET", f"/v1/outcomes?ids={rid},{plain}", key=crm)
    assert many.body["outcomes"] == [None, None]
    mine = await api.call("GET", f"/v1/outcomes?ids={plain},{rid}", key=shop)
    assert mine.body["outcomes"][0] is None
    assert mine.body["outcomes"][1]["request_id"] == rid


async def test_a_read_all_key_reads_every_id_tagged_or_plain(api: Api) -> None:
    shop = await api.key("shop", "write", "read")
    ops = await api.key("ops", "read:all")
    ids = await enqueue(api, shop, 3)
    plain = [request_ids.split(rid)[0] for rid in ids]
    one = await api.call("GET", f"/v1/leads/{ids[0]}", key=ops)
    assert one.status == 200
    assert one.body["request_id"] == ids[0]
    answer = await api.call("GET", "/v1/outcomes?ids=" + ",".join(ids + plain), key=ops)
    got = [outcome["request_id"] for outcome in answer.body["outcomes"]]
    assert got == ids + plain
    # read:all reads; it does not write.
    assert (await api.call("POST", "/v1/leads", key=ops, json_body=LEAD)).status == 403


async def test_a_final_outcome_is_served_under_the_tagged_id(api: Api) -> None:
    shop = await api.key("shop", "write", "read")
    (rid,) = await enqueue(api, shop)
    shard, entry_id = parse_request_id(rid)  # the library reads an API id as its own
    plain = request_ids.split(rid)[0]
    done = Outcome(plain, OutcomeStatus.CREATED, lead_id=42, attempts=1, finished_at=2e9)
    bucket, field = Keys().outcome_slot(shard, entry_id)  # where the worker settles it
    await api.redis.hset(bucket, field, done.pack())
    await api.redis.xdel(Keys().stream(shard), entry_id)
    answer = await api.call("GET", f"/v1/leads/{rid}", key=shop)
    assert answer.body["status"] == "CREATED"
    assert answer.body["lead_id"] == 42
    assert answer.body["request_id"] == rid
    # The producers library (and `leadsync status`) read the tagged id as the request.
    producer = AsyncLeadProducer(api.redis, shards=SHARDS)
    found = await producer.outcome(rid)
    assert found is not None
    assert (found.request_id, found.lead_id) == (rid, 42)
    assert (await producer.outcome(plain)) == dataclasses.replace(found, request_id=plain)


async def test_a_revoked_keys_ids_are_readable_only_by_read_all(api: Api) -> None:
    """A new key under the same name is a new secret: the old ids stay unreadable to it."""
    shop = await api.key("shop", "write", "read")
    ops = await api.key("ops", "read:all")
    (rid,) = await enqueue(api, shop)
    store = KeyStore(api.redis, Keys())
    assert await store.revoke("shop")
    again = await api.key("shop", "write", "read")
    assert (await api.call("GET", f"/v1/leads/{rid}", key=shop)).status == 401
    assert (await api.call("GET", f"/v1/leads/{rid}", key=again)).status == 404
    assert (await api.call("GET", f"/v1/leads/{rid}", key=ops)).status == 200


async def test_an_idempotent_replay_returns_the_same_tagged_ids(api: Api) -> None:
    shop = await api.key("shop", "write", "read")
    headers = {"Idempotency-Key": "order-1"}
    first = await api.call("POST", "/v1/leads", key=shop, json_body=LEAD, headers=headers)
    again = await api.call("POST", "/v1/leads", key=shop, json_body=LEAD, headers=headers)
    assert first.body == again.body
    rid = again.body["request_id"]
    assert (await api.call("GET", f"/v1/leads/{rid}", key=shop)).status == 200
    assert await api.backlog() == 1
