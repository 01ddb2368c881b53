"""The HTTP ingestion API over real HTTP against a real Redis, trying to break it: keys,
scopes, rates, bad bodies, duplicates, concurrent duplicates, Redis down and Redis full.
Every answer is checked against worker/api/openapi.json (tests/support/api_kit.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from producers import AsyncLeadProducer
from producers.keys import Keys
from producers.lead import shard_for
from tests.support.api_kit import SHARDS, Answer, Api, running_api
from tests.support.openapi import document
from tests.support.redis_server import RedisServer
from worker.api.app import MAX_RECORDS

pytestmark = pytest.mark.integration

LEAD = {"email": "ann@example.com", "attributes": {"FirstName": "Ann"}}


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Api]:
    async with running_api(redis_url) as running:
        yield running


@pytest.fixture
async def key(api: Api) -> str:
    return await api.key("web", "write", "read")


# --- health ----------------------------------------------------------------------------


async def test_health_and_readiness_need_no_key(api: Api) -> None:
    assert (await api.call("GET", "/healthz")).body == {"status": "ok"}
    ready = await api.call("GET", "/readyz")
    assert ready.status == 200
    assert ready.body == {"status": "ready", "shards": SHARDS}


async def test_a_changed_shard_count_keeps_the_api_ready_and_is_followed(redis_url: str) -> None:
    """A reshard (or a pod started with another LEADSYNC_SHARDS) never takes the API out
    of service: the stored count is in force, and an upsert placed by the old count is
    refused by the enqueue step and placed again by the new one."""
    async with running_api(redis_url) as api:
        key = await api.key("web", "write", "read")
        first = await api.call("POST", "/v1/leads", key=key, json_body={"email": "a@example.com"})
        assert first.status == 202
        await api.redis.hset(Keys().config(), "shards", SHARDS * 2)
        await api.redis.hset(Keys().reshard(), "to", SHARDS * 2)
        answer = await api.call("GET", "/readyz")
        assert answer.status == 200
        assert answer.body["resharding_to"] == SHARDS * 2
        refused = await api.call("POST", "/v1/leads", key=key, json_body={"email": "b@example.com"})
        assert refused.status == 503
        assert "resharding" in refused.body["errors"][0]["message"]
        assert refused.headers.get("Retry-After")
        await api.redis.delete(Keys().reshard())
        answer = await api.call("GET", "/readyz")
        assert answer.status == 200
        assert answer.body["shards"] == SHARDS * 2
        assert "LEADSYNC_SHARDS" in answer.body["note"]
        emails = [f"p{n}@example.com" for n in range(40)]
        placed = []
        for email in emails:
            answer = await api.call("POST", "/v1/leads", key=key, json_body={"email": email})
            assert answer.status == 202
            placed.append(int(answer.body["request_id"].partition("-")[0]))
        assert max(placed) >= SHARDS  # placed by the new count: streams SHARDS.. exist now
        assert all(
            index == shard_for(f"email:{email}", SHARDS * 2)
            for index, email in zip(placed, emails, strict=True)
        )


async def test_the_document_is_served(api: Api) -> None:
    answer = await api.call("GET", "/v1/openapi.json")
    assert answer.body == document()


# --- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer lsk_not-a-key", "Token x"],
)
async def test_no_or_bad_key_is_401_on_every_v1_route(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path, body in (
        ("POST", "/v1/leads", LEAD),
        ("POST", "/v1/leads:batch", {"records": [LEAD]}),
        ("GET", "/v1/leads/0-1-0", None),
        ("GET", "/v1/outcomes?ids=0-1-0", None),
    ):
        answer = await api.call(method, path, json_body=body, headers=headers)
        assert answer.status == 401, (method, path)
        assert answer.body["errors"][0]["field"] == "Authorization"
    assert await api.backlog() == 0


async def test_a_revoked_key_is_401_at_once(api: Api, key: str) -> None:
    assert (await api.call("POST", "/v1/leads", key=key, json_body=LEAD)).status == 202
    from worker.api.auth import KeyStore

    assert await KeyStore(api.redis, Keys()).revoke("web")
    assert (await api.call("POST", "/v1/leads", key=key, json_body=LEAD)).status == 401


async def test_a_missing_scope_is_403(api: Api) -> None:
    reader = await api.key("reader", "read")
    writer = await api.key("writer", "write")
    assert (await api.call("POST", "/v1/leads", key=reader, json_body=LEAD)).status == 403
    batch = await api.call("POST", "/v1/leads:batch", key=reader, json_body={"records": [LEAD]})
    assert batch.status == 403
    assert (await api.call("GET", "/v1/leads/0-1-0", key=writer)).status == 403
    assert (await api.call("GET", "/v1/outcomes?ids=0-1-0", key=writer)).status == 403
    assert await api.backlog() == 0


async def test_keys_are_stored_hashed(api: Api, key: str) -> None:
    dump = [*await api.redis.hkeys(Keys().api_keys()), *await api.redis.hvals(Keys().api_keys())]
    assert all(key.encode() not in item for item in dump)


async def test_past_the_key_rate_is_429_with_retry_after(api: Api) -> None:
    limited = await api.key("limited", "write", "read", rate_per_s=2)
    answers = [await api.call("GET", "/v1/outcomes?ids=0-1-0", key=limited) for _ in range(6)]
    refused = [a for a in answers if a.status == 429]
    # 6 requests span at most two one-second windows of 2 each.
    assert len(refused) >= 2
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)


async def test_a_key_never_appears_in_logs(
    api: Api, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await api.call("POST", "/v1/leads", key=key, json_body=LEAD)
    await api.call("POST", "/v1/leads", key=key + "x", json_body=LEAD)
    await api.call("GET", "/v1/nope", key=key)
    assert caplog.records, "the access log was captured"
    assert key not in caplog.text


# --- one upsert ------------------------------------------------------------------------


async def test_post_lead_enqueues_and_its_outcome_is_pending(api: Api, key: str) -> None:
    answer = await api.call("POST", "/v1/leads", key=key, json_body=LEAD)
    assert answer.status == 202
    rid = answer.body["request_id"]
    outcome = await api.call("GET", f"/v1/leads/{rid}", key=key)
    assert outcome.status == 200
    assert outcome.body["status"] == "PENDING"
    assert outcome.body["request_id"] == rid
    assert outcome.body["lead_id"] is None
    assert outcome.body["enqueued_at"] > 0
    # The producers library sees the same request.
    producer = AsyncLeadProducer(api.redis, shards=SHARDS)
    found = await producer.outcome(rid)
    assert found is not None
    assert found.status == "PENDING"
    assert await api.backlog() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({}, "lead"),
        ({"email": "a@example.com", "colour": "red"}, "colour"),
        ({"email": "a@example.com", "attributes": {"X": {"y": 1}}}, "attributes.X"),
        ({"email": "a@example.com", "attributes": ["x"]}, "attributes"),
        ({"marketo_id": -4}, "marketo_id"),
        ({"foreign_sys_person_id": "p1"}, "foreign_sys_type"),
        ({"email": "a@example.com", "dedup": "yes"}, "dedup"),
        ({"email": 12}, "email"),
        ([LEAD], "body"),
        ("text", "body"),
        (None, "body"),
    ],
)
async def test_an_invalid_lead_is_422_naming_the_field(
    api: Api, key: str, body: object, field: str
) -> None:
    raw = b"null" if body is None else None
    answer = await api.call(
        "POST",
        "/v1/leads",
        key=key,
        json_body=body,
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 422
    assert answer.body["errors"][0]["field"] == field
    assert answer.body["errors"][0]["message"]
    assert await api.backlog() == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", ""]
)
async def test_wrong_content_type_is_415(api: Api, key: str, content_type: str) -> None:
    answer = await api.call(
        "POST",
        "/v1/leads",
        key=key,
        data=b'{"email": "a@example.com"}',
        headers={"Content-Type": content_type} if content_type else {},
    )
    assert answer.status == 415


async def test_json_with_a_charset_is_accepted(api: Api, key: str) -> None:
    answer = await api.call(
        "POST",
        "/v1/leads",
        key=key,
        data=b'{"email": "a@example.com"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert answer.status == 202


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"",
        b"{'email': 1}",
        b"\xff\xfe",
        b'{"email": "a@example.com"} x',
        b"NaNx",
        b'{"email": "a@example.com", "attributes": {"Score": NaN}}',
        b'{"marketo_id": Infinity}',
        b"[" * 20_000 + b"]" * 20_000,
    ],
    ids=range(9),
)
async def test_bad_json_is_400(api: Api, key: str, raw: bytes) -> None:
    for path in ("/v1/leads", "/v1/leads:batch"):
        answer = await api.call(
            "POST", path, key=key, data=raw, headers={"Content-Type": "application/json"}
        )
        assert answer.status == 400, raw
        assert "Traceback" not in answer.raw.decode(errors="replace")


async def test_a_body_over_the_limit_is_413_with_or_without_a_length(api: Api, key: str) -> None:
    big = b'{"email": "a@example.com", "attributes": {"X": "' + b"y" * 70_000 + b'"}}'
    answer = await api.call(
        "POST", "/v1/leads", key=key, data=big, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    async with api.session.post(
        api.base + "/v1/leads:batch",
        data=chunks(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as r:
        assert r.status == 413
        assert (await r.json())["errors"][0]["field"] == "body"
    assert await api.backlog() == 0


async def test_unknown_routes_are_404_and_wrong_methods_405(api: Api, key: str) -> None:
    for path in ("/", "/v1", "/v2/leads", "/v1/leads/", "/v1/leads/a/b", "/v1/leads:batchx"):
        assert (await api.call("GET", path, key=key)).status in (404, 405), path
    assert (await api.call("GET", "/nope", key=key)).status == 404
    wrong = await api.call("DELETE", "/v1/leads", key=key)
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "POST"
    assert (await api.call("PUT", "/v1/leads/0-1-0", key=key)).status == 405
    assert (await api.call("POST", "/healthz")).status == 405


# --- reading outcomes ------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["0-1-0", "nope", "999-1-0", "1-x-0", "-1-0", "0-1", "%00"])
async def test_an_unknown_or_malformed_request_id_is_404(api: Api, key: str, rid: str) -> None:
    answer = await api.call("GET", f"/v1/leads/{rid}", key=key)
    assert answer.status == 404
    assert answer.body["errors"][0]["field"] == "request_id"


async def test_outcomes_come_in_the_order_of_ids_with_null_for_unknown(api: Api, key: str) -> None:
    ids = [
        (
            await api.call("POST", "/v1/leads", key=key, json_body={"email": f"u{n}@example.com"})
        ).body["request_id"]
        for n in range(3)
    ]
    asked = [ids[2], "nope", ids[0], "0-1-0", ids[1]]
    answer = await api.call("GET", "/v1/outcomes?ids=" + ",".join(asked), key=key)
    assert answer.status == 200
    got = [None if o is None else o["request_id"] for o in answer.body["outcomes"]]
    assert got == [ids[2], None, ids[0], None, ids[1]]


async def test_outcomes_need_ids_and_take_at_most_1000(api: Api, key: str) -> None:
    assert (await api.call("GET", "/v1/outcomes", key=key)).status == 422
    assert (await api.call("GET", "/v1/outcomes?ids=,,", key=key)).status == 422
    many = ",".join(f"0-{n}-0" for n in range(MAX_RECORDS))
    full = await api.call("GET", "/v1/outcomes?ids=" + many, key=key)
    assert full.status == 200
    assert full.body["outcomes"] == [None] * MAX_RECORDS
    over = await api.call("GET", "/v1/outcomes?ids=" + many + ",0-1-1", key=key)
    assert over.status == 413


# --- batches ---------------------------------------------------------------------------


async def test_a_batch_answers_per_record_in_order_and_enqueues_the_valid_ones(
    api: Api, key: str
) -> None:
    records = [
        {"email": "a@example.com"},
        {"email": "nope"},
        {"email": "b@example.com", "attributes": {"City": "Oslo"}},
        {"shoe": 1},
        "not an object",
        {"marketo_id": 7},
    ]
    answer = await api.call("POST", "/v1/leads:batch", key=key, json_body={"records": records})
    assert answer.status == 200
    results = answer.body["results"]
    assert len(results) == len(records)
    assert [("request_id" in r) for r in results] == [True, False, True, False, False, True]
    assert results[1]["errors"][0]["field"] == "email"
    assert results[3]["errors"][0]["field"] == "shoe"
    assert results[4]["errors"][0]["field"] == "record"
    assert await api.backlog() == 3
    ids = [r["request_id"] for r in results if "request_id" in r]
    outcomes = await api.call("GET", "/v1/outcomes?ids=" + ",".join(ids), key=key)
    assert [o["status"] for o in outcomes.body["outcomes"]] == ["PENDING"] * 3


async def test_a_batch_matches_upsert_many(api: Api, key: str) -> None:
    """Same validation and same routing as the producers library."""
    records = [{"email": f"x{n}@example.com"} for n in range(20)] + [{"email": "bad"}]
    answer = await api.call("POST", "/v1/leads:batch", key=key, json_body={"records": records})
    producer = AsyncLeadProducer(api.redis, shards=SHARDS)
    direct = await producer.upsert_many(records)
    for result, mine in zip(answer.body["results"], direct, strict=True):
        if isinstance(mine, str):
            assert result["request_id"].split("-")[0] == mine.split("-")[0]  # same shard
        else:
            assert result["errors"] == [{"field": mine.field, "message": mine.reason}]


async def test_batch_limits_and_shape(api: Api, key: str) -> None:
    over = {"records": [{"email": "a@example.com"}] * (MAX_RECORDS + 1)}
    answer = await api.call("POST", "/v1/leads:batch", key=key, json_body=over)
    assert answer.status == 413
    assert answer.body["errors"][0]["field"] == "records"
    full = {"records": [{"email": "a@example.com"}] * MAX_RECORDS}
    assert (await api.call("POST", "/v1/leads:batch", key=key, json_body=full)).status == 200
    assert await api.backlog() == MAX_RECORDS
    for body, field in (
        ({}, "records"),
        ({"records": {}}, "records"),
        ({"records": [], "extra": 1}, "extra"),
        ([], "body"),
    ):
        bad = await api.call("POST", "/v1/leads:batch", key=key, json_body=body)
        assert bad.status == 422, body
        assert bad.body["errors"][0]["field"] == field
    empty = await api.call("POST", "/v1/leads:batch", key=key, json_body={"records": []})
    assert empty.body == {"results": []}


# --- idempotency -----------------------------------------------------------------------


async def post_once(
    api: Api, key: str, idempotency_key: str, body: object = LEAD, path: str = "/v1/leads"
) -> Answer:
    """A POST carrying an Idempotency-Key."""
    headers = {"Idempotency-Key": idempotency_key}
    return await api.call("POST", path, key=key, json_body=body, headers=headers)


async def test_the_same_idempotency_key_returns_the_same_answer_and_enqueues_once(
    api: Api, key: str
) -> None:
    first = await post_once(api, key, "k-1", LEAD)
    again = await post_once(api, key, "k-1", LEAD)
    assert first.status == again.status == 202
    assert first.body == again.body
    assert await api.backlog() == 1
    other = await post_once(api, key, "k-2", LEAD)
    assert other.body != first.body
    # Another API key has its own keys.
    second_key = await api.key("other", "write")
    theirs = await post_once(api, second_key, "k-1", LEAD)
    assert theirs.body != first.body
    assert await api.backlog() == 3
    # The stored answer lives for the window.
    stored = await api.redis.keys(Keys().api_idempotency("web", "*", "*"))
    ttls = [await api.redis.ttl(name) for name in stored]
    assert ttls
    assert all(0 < ttl <= api.settings.api_idempotency_window_s for ttl in ttls)


async def test_idempotent_batches_are_replayed_and_422s_refused_again(api: Api, key: str) -> None:
    body = {"records": [{"email": "a@example.com"}, {"email": "bad"}]}
    first = await post_once(api, key, "batch-1", body, "/v1/leads:batch")
    again = await post_once(api, key, "batch-1", body, "/v1/leads:batch")
    assert first.body == again.body
    assert await api.backlog() == 1
    invalid = {"email": "bad"}
    one = await post_once(api, key, "i", invalid)
    two = await post_once(api, key, "i", invalid)
    assert one.status == two.status == 422  # not kept: served again, refused again
    assert one.body == two.body


async def test_concurrent_duplicates_enqueue_once(api: Api, key: str) -> None:
    headers = {"Idempotency-Key": "same"}
    answers = await asyncio.gather(
        *(
            api.call("POST", "/v1/leads", key=key, json_body=LEAD, headers=headers)
            for _ in range(20)
        ),
        *(
            api.call(
                "POST", "/v1/leads:batch", key=key, json_body={"records": [LEAD]}, headers=headers
            )
            for _ in range(20)
        ),
    )
    singles = {a.body["request_id"] for a in answers[:20] if a.status == 202}
    batches = {a.body["results"][0]["request_id"] for a in answers[20:] if a.status == 200}
    assert len(singles) == 1
    assert len(batches) == 1
    assert all(a.status in (200, 202, 409) for a in answers)
    assert await api.backlog() == 2


async def test_a_duplicate_still_being_served_gets_409(api: Api, key: str) -> None:
    from worker.api.idempotency import check_key

    marker = Keys().api_idempotency("web", "/v1/leads", check_key("slow"))
    await api.redis.set(marker, "", px=60_000)  # as if another process were serving it
    answer = await post_once(api, key, "slow", LEAD)
    assert answer.status == 409
    assert answer.headers["Retry-After"]
    assert await api.backlog() == 0


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9"])
async def test_a_malformed_idempotency_key_is_400(api: Api, key: str, value: str) -> None:
    async with api.session.post(
        api.base + "/v1/leads",
        json=LEAD,
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": value},
    ) as r:
        assert r.status == 400
        assert (await r.json())["errors"][0]["field"] == "Idempotency-Key"


# --- Redis down or full ----------------------------------------------------------------


@pytest.fixture
def own_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer(appendonly=True).start()  # its data outlives a stop and start
    try:
        yield server  # type: ignore[misc]
    finally:
        server.cleanup()


async def test_redis_down_is_503_with_retry_after_and_readyz_fails(own_redis: RedisServer) -> None:
    async with running_api(own_redis.url) as api:
        key = await api.key("web", "write", "read")
        assert (await api.call("POST", "/v1/leads", key=key, json_body=LEAD)).status == 202
        own_redis.stop()
        for method, path, body in (
            ("POST", "/v1/leads", LEAD),
            ("POST", "/v1/leads:batch", {"records": [LEAD]}),
            ("GET", "/v1/leads/0-1-0", None),
            ("GET", "/v1/outcomes?ids=0-1-0", None),
        ):
            answer = await api.call(
                method, path, key=key, json_body=body, headers={"Idempotency-Key": "d"}
            )
            assert answer.status == 503, path
            assert int(answer.headers["Retry-After"]) >= 1
            assert "Traceback" not in answer.raw.decode()
        assert (await api.call("GET", "/readyz")).status == 503
        assert (await api.call("GET", "/healthz")).status == 200
        own_redis.start()
        assert (await api.call("GET", "/readyz")).status == 200
        answer = await post_once(api, key, "d", LEAD)
        assert answer.status == 202, "a failed request leaves no idempotency marker behind"


async def test_redis_full_is_503_and_nothing_is_half_written(own_redis: RedisServer) -> None:
    async with running_api(own_redis.url) as api:
        key = await api.key("web", "write", "read")
        # One upsert first, so the shard count is agreed and only the enqueue meets OOM.
        assert (await api.call("POST", "/v1/leads", key=key, json_body=LEAD)).status == 202
        await api.redis.config_set("maxmemory", "1")
        try:
            batch = {"records": [{"email": f"p{n}@example.com"} for n in range(500)]}
            for path, body, headers in (
                ("/v1/leads", LEAD, {}),
                ("/v1/leads", LEAD, {"Idempotency-Key": "full"}),
                ("/v1/leads:batch", batch, {}),
                ("/v1/leads:batch", batch, {"Idempotency-Key": "full-b"}),
            ):
                answer = await api.call("POST", path, key=key, json_body=body, headers=headers)
                assert answer.status == 503, path
                assert answer.body["errors"][0]["message"].startswith("Redis is full")
                assert answer.headers["Retry-After"]
        finally:
            await api.redis.config_set("maxmemory", "0")
        assert await api.backlog() == 1
        assert await api.redis.keys("leadsync:api:idem:*") == []


# --- the contract, route by route ------------------------------------------------------


async def test_every_documented_route_and_status_class_is_exercised(api: Api, key: str) -> None:
    """A run through every route of the document (each answer is validated by api.call)."""
    rid = (await api.call("POST", "/v1/leads", key=key, json_body=LEAD)).body["request_id"]
    await api.call("POST", "/v1/leads:batch", key=key, json_body={"records": [LEAD]})
    await api.call("GET", f"/v1/leads/{rid}", key=key)
    await api.call("GET", f"/v1/outcomes?ids={rid}", key=key)
    for path in ("/v1/openapi.json", "/healthz", "/readyz", "/metrics"):
        await api.call("GET", path)
    exercised = {(method, template) for method, template, _ in api.seen}
    documented = {
        (method.upper(), "/v1/leads/{request_id}" if "{" in path else path)
        for path, operations in document()["paths"].items()
        for method in operations
    }
    templated = {
        (m, "/v1/leads/{request_id}" if p.startswith("/v1/leads/") else p) for m, p in exercised
    }
    assert documented <= templated
