"""The README's web-app examples run: they enqueue, reject bad input by field, and read outcomes."""

from __future__ import annotations

import importlib

import pytest
from aiohttp.test_utils import TestClient, TestServer

from producers.contract import Keys, Outcome, OutcomeStatus, parse_request_id

pytestmark = pytest.mark.integration


def test_the_flask_example_enqueues_rejects_by_field_and_reads_the_outcome(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    monkeypatch.setenv("LEADSYNC_REDIS_URL", redis_url)
    module = importlib.reload(importlib.import_module("examples.flask_app"))
    client = module.app.test_client()

    accepted = client.post("/signup", json={"email": "ann@example.com", "name": "Ann"})
    assert accepted.status_code == 202
    request_id = accepted.get_json()["request_id"]
    assert client.get(f"/leads/{request_id}").get_json()["status"] == "PENDING"

    shard, entry_id = parse_request_id(request_id)
    done = Outcome(request_id, OutcomeStatus.CREATED, lead_id=42)
    redis.Redis.from_url(redis_url).hset(Keys().outcome(shard, entry_id), mapping=done.to_fields())
    assert client.get(f"/leads/{request_id}").get_json() == {
        "status": "CREATED",
        "lead_id": 42,
        "error": None,
    }

    rejected = client.post("/signup", json={"email": "not-an-address", "name": "Bo"})
    assert rejected.status_code == 422
    assert "email" in rejected.get_json()["error"]
    assert client.get("/leads/0-1-0").status_code == 404
    module.producer.close()


async def test_the_asyncio_example_enqueues_and_reads_the_outcome(redis_url: str) -> None:
    from examples.aiohttp_app import create_app

    async with TestClient(TestServer(create_app(redis_url))) as client:
        accepted = await client.post("/signup", json={"email": "bo@example.com", "name": "Bo"})
        assert accepted.status == 202
        request_id = (await accepted.json())["request_id"]
        status = await client.get(f"/leads/{request_id}")
        assert (await status.json())["status"] == "PENDING"
        rejected = await client.post("/signup", json={"name": "no key"})
        assert rejected.status == 422
        assert "lead" in (await rejected.json())["error"]
