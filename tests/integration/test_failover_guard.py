"""After a master change nothing rolled back can let a call through, and an upsert or a
lease its replicas did not confirm is refused: a real redis-server restarted from its
AOF (a new run_id over the old data, as after a failover), and a lone master asked for
a replica it does not have."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from producers import LeadProducer, NotReplicated
from producers.contract import Keys
from tests.support.api_kit import running_api
from tests.support.redis_server import RedisServer
from worker.ledger import Ledger
from worker.limits import Denied, Permit, RedisLimiter
from worker.settings import Settings

pytestmark = pytest.mark.integration

PREFIX = "guard"
QUIET_S = 1.0


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.cleanup()


def limiter_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "key_prefix": PREFIX,
        "rate_limit_calls": 100,
        "rate_burst_calls": 100,
        "rate_limit_window_s": QUIET_S,
    }
    return Settings(**(values | overrides))


async def restart(server: RedisServer) -> None:
    """Stop (the AOF is flushed) and start again over the same data: a new run_id."""
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)


async def until_granted(take: Any, within_s: float) -> float:
    """Seconds until ``take()`` grants (polling every 50 ms); fails after ``within_s``."""
    started = time.monotonic()
    while (granted := await take()) is None or isinstance(granted, Denied):
        assert time.monotonic() - started < within_s, f"still refused: {granted}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_after_a_master_change_no_lease_or_permit_is_granted_for_the_quiet_period(
    aof_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(aof_server.url)
    try:
        ledger = Ledger(client, Keys(PREFIX), result_ttl_s=60, lease_quiet_s=2 * QUIET_S)
        limiter = RedisLimiter(client, limiter_settings(aof_server.url))
        # The first master ever seen: nothing to guard, granted at once.
        token = await ledger.acquire_lease(0, 30)
        assert token is not None
        permit = await limiter.acquire("pod-a")
        assert isinstance(permit, Permit)
        await limiter.release(permit)
        await ledger.release_lease(0, token)

        await restart(aof_server)
        await client.connection_pool.disconnect()  # a worker reconnects the same way

        denied = await limiter.acquire("pod-a")
        assert isinstance(denied, Denied)
        assert denied.reason == "failover"
        assert QUIET_S <= denied.retry_after_s <= QUIET_S + 0.5
        assert await ledger.acquire_lease(0, 30) is None
        assert await client.exists(Keys(PREFIX).lease(0)) == 0

        permit_after_s = await until_granted(lambda: limiter.acquire("pod-a"), 5)
        lease_after_s = await until_granted(lambda: ledger.acquire_lease(0, 30), 5)
        # The window's quiet first, the leases' longer one after it: never before.
        assert permit_after_s >= QUIET_S - 0.3
        assert permit_after_s + lease_after_s >= 2 * QUIET_S - 0.3
    finally:
        await client.aclose()


async def test_a_lease_no_replica_confirms_is_given_up_and_covers_no_call(
    redis_url: str,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = Keys(PREFIX)
        ledger = Ledger(client, keys, result_ttl_s=60, replicas=1, replica_wait_s=0.05)
        assert await ledger.acquire_lease(3, 30) is None
        assert await client.exists(keys.lease(3)) == 0  # released, not left to expire
        plain = Ledger(client, keys, result_ttl_s=60)
        assert await plain.acquire_lease(3, 30) is not None
    finally:
        await client.aclose()


def test_an_upsert_no_replica_confirms_raises_not_replicated_naming_what_was_written(
    redis_url: str,
) -> None:
    with LeadProducer(
        redis.Redis.from_url(redis_url),
        key_prefix=PREFIX,
        shards=2,
        owns_client=True,
        replicas=1,
        replica_wait_s=0.05,
    ) as producer:
        with pytest.raises(NotReplicated) as raised:
            producer.upsert(email="ann@example.com")
        assert raised.value.retry_after_s > 0
        (rid,) = raised.value.results
        outcome = producer.outcome(str(rid))
        assert outcome is not None
        assert outcome.status.value == "PENDING"

        with pytest.raises(NotReplicated) as raised:
            producer.upsert_many([{"email": "bob@example.com"}, {"email": "not an email"}])
        written, refused = raised.value.results
        assert isinstance(written, str)
        assert not isinstance(refused, str)

        with pytest.raises(NotReplicated):
            producer.upsert_batch([{"email": "cy@example.com"}])


async def test_the_api_answers_503_with_retry_after_when_no_replica_confirms(
    redis_url: str,
) -> None:
    async with running_api(redis_url, enqueue_replicas=1, replica_wait_s=0.05) as api:
        key = await api.key("app")
        one = await api.call("POST", "/v1/leads", key=key, json_body={"email": "a@example.com"})
        assert one.status == 503
        assert int(one.headers["Retry-After"]) >= 1
        assert "replica" in one.body["errors"][0]["message"]
        batch = await api.call(
            "POST", "/v1/leads:batch", key=key, json_body={"records": [{"email": "b@example.com"}]}
        )
        assert batch.status == 503
        assert "Retry-After" in batch.headers


def test_a_master_refusing_writes_without_replicas_is_not_replicated_for_the_producer(
    aof_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(aof_server.url)
    with LeadProducer(client, key_prefix=PREFIX, shards=2, owns_client=True) as producer:
        client.config_set("min-replicas-to-write", 1)
        with pytest.raises(NotReplicated) as raised:
            producer.upsert(email="ann@example.com")
        assert raised.value.results == []  # NOREPLICAS: nothing was written
        assert "min-replicas-to-write" in str(raised.value)
        with pytest.raises(NotReplicated):
            producer.upsert_many([{"email": "bob@example.com"}, {"email": "cy@example.com"}])
        assert "ann@example.com" not in str(raised.value)
