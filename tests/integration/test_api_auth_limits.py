"""A key made without a rate gets the default rate, and failed authentications are
throttled (429 + Retry-After) without the presented key in any log line (review F10).
Real HTTP against a real Redis (tests/support/api_kit.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio

from producers.contract import Keys
from tests.support.api_kit import running_api
from worker.api.auth import KeyStore, Policy
from worker.api.errors import ApiError
from worker.settings import Settings

pytestmark = pytest.mark.integration

DEFAULTS = Settings()
BAD_KEY = "lsk_" + "x" * 43


async def test_a_key_made_without_a_rate_gets_the_default(redis_url: str) -> None:
    rate = DEFAULTS.api_default_rate_per_s
    assert rate > 0, "keys have a default rate"
    async with running_api(redis_url) as api:
        key = await api.key("no-rate", "read")
        # 3 x the rate at once spans at most two one-second windows: one goes past it.
        answers = await asyncio.gather(
            *(api.call("GET", "/v1/outcomes?ids=0-1-0", key=key) for _ in range(int(rate * 3)))
        )
    refused = [a for a in answers if a.status == 429]
    assert refused, "past the default rate"
    assert all(a.headers["Retry-After"] == "1" for a in refused)
    assert "the default rate" in refused[0].body["errors"][0]["message"]
    assert {a.status for a in answers} <= {200, 429}


async def test_failed_authentications_are_throttled_with_retry_after(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    limit = DEFAULTS.api_auth_failures
    caplog.set_level(logging.DEBUG)
    async with running_api(redis_url) as api:
        good = await api.key("good", "read")
        statuses = [
            (await api.call("GET", "/v1/outcomes?ids=0-1-0", key=BAD_KEY)).status
            for _ in range(limit)
        ]
        assert statuses == [401] * limit
        throttled = await api.call("GET", "/v1/outcomes?ids=0-1-0", key=BAD_KEY)
        assert throttled.status == 429
        retry_after = int(throttled.headers["Retry-After"])
        assert 1 <= retry_after <= DEFAULTS.api_auth_failure_window_s
        # A working key is not locked out by another client's failures.
        assert (await api.call("GET", "/v1/outcomes?ids=0-1-0", key=good)).status == 200
        stored = [k async for k in api.redis.scan_iter(match="*auth-failures*")]
    assert stored, "counted in Redis"
    assert all(BAD_KEY.encode() not in k for k in stored), "no key in a key name"
    assert BAD_KEY not in caplog.text, "the presented key is never logged"


async def test_failures_are_counted_per_client_address(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    store = KeyStore(client, Keys("addr-test"), Policy(auth_failures=3, auth_failure_window_s=30))
    try:
        key, _ = await store.create("app", ["read"])
        for _ in range(3):
            with pytest.raises(ApiError) as bad:
                await store.authenticate(f"Bearer {BAD_KEY}1", "read", client="10.0.0.1")
            assert bad.value.status == 401
        # Every bad key from that address is refused now with 429: guessing slows down.
        with pytest.raises(ApiError) as throttled:
            await store.authenticate(f"Bearer {BAD_KEY}2", "read", client="10.0.0.1")
        assert throttled.value.status == 429
        assert 1 <= int(throttled.value.headers["Retry-After"]) <= 30
        # A working key behind the same address (a NAT, a proxy) is not locked out.
        assert (await store.authenticate(f"Bearer {key}", "read", client="10.0.0.1")).name == "app"
        # Another address's bad key is a plain 401.
        with pytest.raises(ApiError) as other:
            await store.authenticate(f"Bearer {BAD_KEY}3", "read", client="10.0.0.2")
        assert other.value.status == 401
        names = [k async for k in client.scan_iter(match="addr-test:api:auth-failures:*")]
        assert names
        assert all(b"10.0.0.1" not in k for k in names), "addresses hashed in key names"
    finally:
        await client.aclose()


async def test_throttling_can_be_turned_off(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    store = KeyStore(client, Keys("off-test"), Policy(auth_failures=0))
    try:
        for _ in range(20):
            with pytest.raises(ApiError) as bad:
                await store.authenticate(f"Bearer {BAD_KEY}", "read", client="10.0.0.1")
            assert bad.value.status == 401
    finally:
        await client.aclose()
