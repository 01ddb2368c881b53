"""Admission before Redis fills: an upsert is refused with Backpressure (nothing written)
when its shard's backlog or Redis's memory passes the high-water mark, the API answers 503
with Retry-After, and a producer writing as fast as it can into a small Redis meets
Backpressure, never Redis's own OOM error. The bulk lane is refused earlier, at its own
backlog bound and below the live memory reserve, while live upserts still go in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from producers import Backpressure, LeadProducer
from producers._core import Admission
from producers.contract import Keys
from tests.support.api_kit import running_api
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PREFIX = "adm"


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def producer(url: str, shards: int = 1) -> LeadProducer:
    return LeadProducer(
        redis.Redis.from_url(url), key_prefix=PREFIX, shards=shards, owns_client=True
    )


def backlog(url: str, shards: int = 1) -> int:
    with redis.Redis.from_url(url) as client:
        return sum(int(client.xlen(Keys(PREFIX).stream(s))) for s in range(shards))


def test_a_full_shard_refuses_with_backpressure_and_writes_nothing(
    small_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADSYNC_MAX_SHARD_BACKLOG", "3")
    monkeypatch.setenv("LEADSYNC_BACKPRESSURE_RETRY_S", "7")
    with producer(small_redis.url) as p:
        for n in range(3):
            p.upsert(email=f"p{n}@example.com")
        with pytest.raises(Backpressure) as raised:
            p.upsert(email="late@example.com")
        assert raised.value.retry_after_s == 7
        assert "backlog" in str(raised.value)
        assert "late@example.com" not in str(raised.value)
        assert backlog(small_redis.url) == 3

        # upsert_many: the refused chunk is not in the results: nothing before it.
        with pytest.raises(Backpressure) as many:
            p.upsert_many([{"email": "a@example.com"}, {"email": "bad"}])
        assert many.value.results == []
        # The API's atomic batch: all or none.
        with pytest.raises(Backpressure):
            p.upsert_batch([{"email": "b@example.com"}])
        assert backlog(small_redis.url) == 3


def test_upsert_many_admits_or_refuses_a_chunk_whole_and_reports_what_went_before(
    small_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-record refusals could let a newer write of a lead in while its older one is
    refused, and the app's retry would then apply the older one last."""
    monkeypatch.setenv("LEADSYNC_MAX_SHARD_BACKLOG", "1500")
    records = [
        {"email": f"m{n % 50}@example.com", "attributes": {"Company": f"write {n}"}}
        for n in range(2500)  # chunks of 1000, 1000 and 500
    ]
    with producer(small_redis.url) as p:
        with pytest.raises(Backpressure) as raised:
            p.upsert_many(records)
        results = raised.value.results
        # The first chunk went in whole (backlog 0 < 1500), the second too (1000 < 1500),
        # the third was refused whole (2000 >= 1500): resend from len(results).
        assert len(results) == 2000
        assert all(isinstance(r, str) for r in results)
        assert backlog(small_redis.url) == 2000


async def test_the_api_answers_503_with_retry_after_under_backpressure(
    small_redis: RedisServer,
) -> None:
    async with running_api(small_redis.url, max_shard_backlog=1, backpressure_retry_s=9) as api:
        key = await api.key("app")
        first = await api.call("POST", "/v1/leads", key=key, json_body={"email": "a@example.com"})
        assert first.status == 202
        answers = [
            await api.call("POST", "/v1/leads", key=key, json_body={"email": f"x{n}@example.com"})
            for n in range(8)  # one of the four shards is full by now
        ]
        refused = [a for a in answers if a.status == 503]
        assert refused, [a.status for a in answers]
        assert refused[0].headers["Retry-After"] == "9"
        assert "backlog" in refused[0].body["errors"][0]["message"]


def test_a_producer_filling_redis_meets_backpressure_never_oom(
    small_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with redis.Redis.from_url(small_redis.url) as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 24 * 1024 * 1024)
    monkeypatch.setenv("LEADSYNC_MEMORY_HIGH_WATER", "0.8")
    monkeypatch.setenv("LEADSYNC_MAX_SHARD_BACKLOG", "0")
    filler = "x" * 1500
    written = 0

    def fill(p: LeadProducer) -> None:
        nonlocal written
        for chunk in range(200):  # up to 200,000 records: far more than fits
            records = [
                {"email": f"f{chunk}-{n}@example.com", "attributes": {"Notes": filler}}
                for n in range(1000)
            ]
            written += len(p.upsert_many(records))

    with producer(small_redis.url, shards=4) as p:
        with pytest.raises(Backpressure) as raised:
            fill(p)
        assert "memory" in str(raised.value)
        assert written > 1000  # it did fill up first
        # Live work goes on being refused cleanly, never with Redis's OOM error.
        with pytest.raises(Backpressure):
            p.upsert(email="one-more@example.com")


def test_admission_bounds_bulk_at_its_own_backlog_and_below_the_live_reserve() -> None:
    admission = Admission(
        max_shard_backlog=200, memory_high_water=0.85, max_bulk_backlog=50, live_memory_reserve=0.15
    )
    assert admission.bounds("live") == (200, 0.85)
    backlog_bound, high_water = admission.bounds("bulk")
    assert backlog_bound == 50
    assert high_water == pytest.approx(0.70)
    # A reserve as large as the mark still leaves bulk a bound, never none (0 = off).
    assert Admission(0, 0.5, 0, 0.6).bounds("bulk")[1] == pytest.approx(0.01)
    assert Admission(0, 0.0, 0, 0.15).bounds("bulk") == (0, 0.0), "no mark: no bound"


def bulk_stream_length(url: str, shard: int = 0, shards: int = 1) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.xlen(Keys(PREFIX).stream(shards + shard)))


def test_bulk_is_refused_at_the_live_reserve_while_a_live_upsert_is_admitted(
    small_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis at about half its maxmemory: above the bulk lane's mark (0.8 - 0.5) and below
    the live one (0.8). Bulk is refused with nothing written (no entry, no bulk mark on
    the lead); live goes in."""
    with redis.Redis.from_url(small_redis.url) as client:
        client.config_set("maxmemory", 2 * int(client.info("memory")["used_memory"]))
    monkeypatch.setenv("LEADSYNC_MEMORY_HIGH_WATER", "0.8")
    monkeypatch.setenv("LEADSYNC_LIVE_MEMORY_RESERVE", "0.5")
    monkeypatch.setenv("LEADSYNC_MAX_SHARD_BACKLOG", "0")
    monkeypatch.setenv("LEADSYNC_MAX_BULK_BACKLOG", "0")
    with producer(small_redis.url) as p:
        with pytest.raises(Backpressure) as single:
            p.upsert(email="backfill@example.com", lane="bulk")
        assert "memory" in str(single.value)
        with pytest.raises(Backpressure) as many:
            p.upsert_many([{"email": f"b{n}@example.com"} for n in range(5)], lane="bulk")
        assert many.value.results == []
        with pytest.raises(Backpressure):
            p.upsert_batch([{"email": "c@example.com"}], lane="bulk")
        assert bulk_stream_length(small_redis.url) == 0
        with redis.Redis.from_url(small_redis.url) as client:
            assert client.keys(f"{PREFIX}:*:fields:*") == [], "no bulk mark written"

        live = p.upsert(email="signup@example.com")
        assert live.startswith("0-")
        assert len(p.upsert_many([{"email": f"l{n}@example.com"} for n in range(3)])) == 3
        assert backlog(small_redis.url) == 4


def test_the_bulk_backlog_cap_refuses_bulk_while_live_goes_through(
    small_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LEADSYNC_MAX_BULK_BACKLOG bounds a shard's bulk stream only: at the cap a bulk
    upsert is refused, and live upserts of the same shard (and of the same lead) go in."""
    monkeypatch.setenv("LEADSYNC_MAX_BULK_BACKLOG", "3")
    monkeypatch.setenv("LEADSYNC_MAX_SHARD_BACKLOG", "100")
    monkeypatch.setenv("LEADSYNC_MEMORY_HIGH_WATER", "0")
    with producer(small_redis.url) as p:
        for n in range(3):
            assert p.upsert(email=f"old{n}@example.com", lane="bulk").startswith("1-")
        with pytest.raises(Backpressure) as raised:
            p.upsert(email="old3@example.com", lane="bulk")
        assert "backlog" in str(raised.value)
        with pytest.raises(Backpressure):
            p.upsert_many([{"email": "old4@example.com"}], lane="bulk")
        assert bulk_stream_length(small_redis.url) == 3

        for n in range(5):  # live has its own bound (100): past the bulk cap, still in
            assert p.upsert(email=f"old{n}@example.com").startswith("0-")
        assert len(p.upsert_many([{"email": f"new{n}@example.com"} for n in range(5)])) == 5
        assert backlog(small_redis.url) == 10
        assert bulk_stream_length(small_redis.url) == 3


async def test_the_api_refuses_bulk_at_its_cap_with_503_and_admits_live(
    small_redis: RedisServer,
) -> None:
    async with running_api(small_redis.url, max_bulk_backlog=1, backpressure_retry_s=4) as api:
        key = await api.key("app")
        lead = {"email": "a@example.com"}
        first = await api.call("POST", "/v1/leads?lane=bulk", key=key, json_body=lead)
        assert first.status == 202
        bulk = await api.call("POST", "/v1/leads?lane=bulk", key=key, json_body=lead)
        assert bulk.status == 503
        assert bulk.headers["Retry-After"] == "4"
        assert "backlog" in bulk.body["errors"][0]["message"]
        live = await api.call("POST", "/v1/leads", key=key, json_body=lead)
        assert live.status == 202
