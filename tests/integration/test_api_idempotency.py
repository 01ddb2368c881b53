"""Idempotency-Key over real HTTP against a real server and Redis: a key answers again
only for the same request (method, route, exact body), a key reused with another body is
422 and enqueues nothing, and only 2xx answers are kept (a corrected retry of an invalid
lead under the same key is served). Every answer is checked against
worker/api/openapi.json (tests/support/api_kit.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from producers import AsyncLeadProducer
from producers.keys import Keys
from tests.support.api_kit import Answer, Api, running_api

pytestmark = pytest.mark.integration

ANN = {"email": "ann@example.com", "attributes": {"FirstName": "Ann"}}
BOB = {"email": "bob@example.com", "attributes": {"FirstName": "Bob"}}
LEADS = "/v1/leads"
BATCH = "/v1/leads:batch"


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Api]:
    async with running_api(redis_url, api_idempotency_wait_s=0.5) as running:
        yield running


@pytest.fixture
async def key(api: Api) -> str:
    return await api.key("web", "write", "read")


async def post(api: Api, key: str, idempotency_key: str, body: object, path: str = LEADS) -> Answer:
    headers = {"Idempotency-Key": idempotency_key}
    return await api.call("POST", path, key=key, json_body=body, headers=headers)


def assert_reused(answer: Answer) -> None:
    assert answer.status == 422
    [error] = answer.body["errors"]
    assert error["field"] == "Idempotency-Key"
    assert "different request body" in error["message"]


async def stored_keys(api: Api) -> list[bytes]:
    return [bytes(name) for name in await api.redis.keys(Keys().api_idempotency("web", "*", "*"))]


async def test_same_key_same_body_replays_the_answer_and_enqueues_once(api: Api, key: str) -> None:
    first = await post(api, key, "k", ANN)
    again = await post(api, key, "k", ANN)
    assert first.status == again.status == 202
    assert first.body == again.body
    batch = {"records": [ANN, {"email": "bad"}]}
    one = await post(api, key, "b", batch, BATCH)
    two = await post(api, key, "b", batch, BATCH)
    assert one.status == two.status == 200
    assert one.body == two.body
    assert await api.backlog() == 2
    # Redis keeps the answer and a digest of the request, never the lead.
    for name in await stored_keys(api):
        assert b"ann@example.com" not in bytes(await api.redis.get(name) or b"")


@pytest.mark.parametrize(
    ("path", "first_body", "second_body"),
    [
        (LEADS, ANN, BOB),
        (LEADS, ANN, {**ANN, "attributes": {"FirstName": "Anne"}}),
        (BATCH, {"records": [ANN]}, {"records": [BOB]}),
        (BATCH, {"records": [ANN]}, {"records": [ANN, BOB]}),
    ],
)
async def test_same_key_another_body_is_422_and_enqueues_nothing(
    api: Api, key: str, path: str, first_body: object, second_body: object
) -> None:
    first = await post(api, key, "reused", first_body, path)
    assert first.status in (200, 202)
    assert await api.backlog() == 1
    reused = await post(api, key, "reused", second_body, path)
    assert_reused(reused)
    assert await api.backlog() == 1, "the second upsert is not enqueued"
    # The first request's outcome and stored answer are untouched.
    again = await post(api, key, "reused", first_body, path)
    assert (again.status, again.body) == (first.status, first.body)
    rid = first.body["request_id"] if path == LEADS else first.body["results"][0]["request_id"]
    outcome = await api.call("GET", f"/v1/leads/{rid}", key=key)
    assert outcome.status == 200
    assert outcome.body["status"] == "PENDING"
    # Another key for the second request is served.
    fresh = await post(api, key, "fresh", second_body, path)
    assert fresh.status in (200, 202)
    assert await api.backlog() > 1


async def test_the_same_json_in_other_bytes_is_another_body(api: Api, key: str) -> None:
    """The fingerprint is of the exact bytes: a client that re-serializes differently
    learns it at once rather than having its upsert silently dropped."""
    headers = {"Idempotency-Key": "bytes", "Content-Type": "application/json"}
    first = await api.call(
        "POST", LEADS, key=key, data=b'{"email":"ann@example.com"}', headers=headers
    )
    assert first.status == 202
    spaced = await api.call(
        "POST", LEADS, key=key, data=b'{"email": "ann@example.com"}', headers=headers
    )
    assert_reused(spaced)
    assert await api.backlog() == 1


async def test_an_invalid_lead_is_not_kept_so_a_corrected_retry_is_enqueued(
    api: Api, key: str
) -> None:
    invalid = await post(api, key, "fix-me", {"email": "not-an-email"})
    assert invalid.status == 422
    assert invalid.body["errors"][0]["field"] == "email"
    corrected = await post(api, key, "fix-me", ANN)
    assert corrected.status == 202
    assert await api.backlog() == 1
    # From then on the key belongs to the corrected request.
    assert (await post(api, key, "fix-me", ANN)).body == corrected.body
    assert_reused(await post(api, key, "fix-me", {"email": "not-an-email"}))
    assert await api.backlog() == 1


async def test_a_batch_that_enqueued_nothing_is_not_kept_so_a_corrected_one_is_enqueued(
    api: Api, key: str
) -> None:
    """A batch answers 200 with a result per record; when every record was refused it
    wrote nothing, and keeping it would turn the corrected batch into a 422 "reused"."""
    refused = await post(api, key, "fix-batch", {"records": [{"email": "bad"}]}, BATCH)
    assert refused.status == 200
    assert "request_id" not in refused.body["results"][0]
    corrected = await post(api, key, "fix-batch", {"records": [ANN]}, BATCH)
    assert corrected.status == 200
    assert "request_id" in corrected.body["results"][0]
    assert await api.backlog() == 1
    # A batch that wrote something is kept: the key is the corrected batch's from now on.
    assert (await post(api, key, "fix-batch", {"records": [ANN]}, BATCH)).body == corrected.body
    assert await api.backlog() == 1


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        ({"email": "a@example.com", "colour": "red"}, 422),
        ([ANN], 422),
        (b"{not json", 400),
    ],
)
async def test_a_refused_body_then_a_corrected_retry_under_the_same_key_is_enqueued(
    api: Api, key: str, bad: object, status: int
) -> None:
    headers = {"Idempotency-Key": "again", "Content-Type": "application/json"}
    raw = bad if isinstance(bad, bytes) else None
    json_body = None if isinstance(bad, bytes) else bad
    refused = await api.call("POST", LEADS, key=key, json_body=json_body, data=raw, headers=headers)
    assert refused.status == status
    corrected = await post(api, key, "again", ANN)
    assert corrected.status == 202
    assert await api.backlog() == 1


async def test_concurrent_requests_with_one_key_and_different_bodies(api: Api, key: str) -> None:
    """Only the request that claims the key is served; the others with its body get its
    answer (or 409 while it is served), those with another body 422; one enqueue."""
    bodies = [{"email": f"p{n % 5}@example.com"} for n in range(40)]
    answers = await asyncio.gather(*(post(api, key, "race", body) for body in bodies))
    accepted = [(body, a) for body, a in zip(bodies, answers, strict=True) if a.status == 202]
    assert accepted
    winner = accepted[0][0]
    assert all(body == winner for body, _ in accepted)
    assert len({a.body["request_id"] for _, a in accepted}) == 1
    for body, answer in zip(bodies, answers, strict=True):
        if body == winner:
            assert answer.status in (202, 409)
        else:
            assert_reused(answer)
    assert await api.backlog() == 1


async def test_another_body_while_the_first_is_served_is_422_at_once(
    api: Api, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first request held between claiming the key and enqueuing (the server runs in
    this event loop): another body is refused at once, the same body waits, then 409."""
    gate = asyncio.Event()
    real_upsert = AsyncLeadProducer.upsert

    async def held_upsert(self: AsyncLeadProducer, *args: Any, **kwargs: Any) -> str:
        await gate.wait()
        return await real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(AsyncLeadProducer, "upsert", held_upsert)
    first = asyncio.create_task(post(api, key, "busy", ANN))
    try:
        while not await stored_keys(api):  # the first has claimed the key
            await asyncio.sleep(0.01)
        started = time.monotonic()
        assert_reused(await post(api, key, "busy", BOB))
        assert time.monotonic() - started < api.settings.api_idempotency_wait_s, "no wait"
        same = await post(api, key, "busy", ANN)
        assert same.status == 409, "the same body waits for the first answer, then 409"
        assert same.headers["Retry-After"]
        assert await api.backlog() == 0
    finally:
        gate.set()
        done = await first
    assert done.status == 202
    assert (await post(api, key, "busy", ANN)).body == done.body
    assert_reused(await post(api, key, "busy", BOB))
    assert await api.backlog() == 1
