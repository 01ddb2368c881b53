"""Learning the instance's fields (worker/ops/fields.py) on a real Redis: a permit first,
the set replaced whole with its time, failures that keep the set learned before and never
hold the pipeline, and what the doctor says."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from producers.keys import Keys, LimiterKeys
from producers.known_fields import LEARNED_AT_FIELD
from tests.unit.test_fields_describe import describe_answer
from worker.errors import AuthError, CallTimeout, QuotaExceededError, ThrottledError
from worker.limits import RedisLimiter
from worker.marketo.describe import REST_SOURCE, SOAP_SOURCE, LeadFieldNames, describer_for
from worker.marketo.rest.describe import DESCRIBE2_PATH
from worker.marketo.soap.api import SoapApi
from worker.marketo.stub import StubApi
from worker.ops import fields
from worker.ops.doctor import check_learned_fields
from worker.settings import Settings
from worker.transport import HttpReply, MockTransport

KEYS = Keys()
HOLDER = "fields:test"


def settings(**overrides: object) -> Settings:
    return Settings(
        **{"rate_limit_calls": 1000, "rate_burst_calls": 1000, **overrides}  # type: ignore[arg-type]
    )


class Describer:
    """A describe call that answers ``names`` (or raises ``error``) and counts its calls."""

    def __init__(self, *names: str, error: Exception | None = None) -> None:
        self.names = names
        self.error = error
        self.calls = 0

    async def __call__(self) -> LeadFieldNames:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return LeadFieldNames(self.names, SOAP_SOURCE)


async def refresh(
    redis: Redis, describe: Describer, config: Settings | None = None, **kwargs: bool
) -> fields.FieldsRefresh:
    config = config or settings()
    limiter = RedisLimiter(redis, config)
    return await fields.refresh_fields(
        redis, KEYS, limiter, describe, config, holder=HOLDER, **kwargs
    )


async def test_a_refresh_stores_both_spellings_case_folded_with_the_time_learned(
    aredis: Redis,
) -> None:
    before = time.time()
    report = await refresh(aredis, Describer("Id", "FirstName", "DateofBirth", "leadsyncId"))

    assert (report.status, report.count) == ("stored", 4)
    known = await fields.read_fields(aredis, KEYS)
    assert known is not None
    assert {"id", "firstname", "dateofbirth", "leadsyncid"} <= known.names
    assert known.count == 4
    assert known.source == SOAP_SOURCE
    assert known.learned_at is not None
    assert before <= known.learned_at <= time.time()
    ttl = await aredis.ttl(KEYS.known_fields())
    assert fields.FIELDS_KEEP_S - 5 <= ttl <= fields.FIELDS_KEEP_S
    assert KEYS.known_fields() == "leadsync:fields"


async def test_a_refresh_replaces_the_set_whole(aredis: Redis) -> None:
    await refresh(aredis, Describer("Email", "Pants"))
    await aredis.delete(KEYS.control("fields-refresh"))  # the next turn
    await refresh(aredis, Describer("Email", "Shirt"))

    known = await fields.read_fields(aredis, KEYS)
    assert known is not None
    assert "shirt" in known.names
    assert "pants" not in known.names, "a field gone from Marketo is gone from the set"


async def test_the_describe_call_takes_a_permit_counted_against_rate_and_quota(
    aredis: Redis,
) -> None:
    config = settings()
    await refresh(aredis, Describer("Email"), config)

    state = await RedisLimiter(aredis, config).state()
    assert state.quota_used_today == 1
    assert state.calls_in_window == 1
    assert state.slots_in_use == 0, "the slot is given back once the call answered"


async def test_no_permit_skips_the_round_without_calling(aredis: Redis) -> None:
    config = settings(daily_quota=1)
    limiter = RedisLimiter(aredis, config)
    assert not hasattr(await limiter.acquire("drain"), "reason")  # the day's one call
    describe = Describer("Email")

    report = await refresh(aredis, describe, config)

    assert report.status == "limited"
    assert report.detail == "quota"
    assert report.retry_after_s > 0
    assert describe.calls == 0
    assert await fields.read_fields(aredis, KEYS) is None
    assert not await aredis.exists(KEYS.control("fields-refresh")), "the next try may go"


async def test_a_hold_refuses_the_permit_too(aredis: Redis) -> None:
    config = settings()
    await RedisLimiter(aredis, config).hold("bad credentials")
    describe = Describer("Email")
    assert (await refresh(aredis, describe, config)).status == "limited"
    assert describe.calls == 0


@pytest.mark.parametrize(
    "error",
    [AuthError("20013 - Access Denied", code=20013), CallTimeout("no answer"), ValueError("x")],
)
async def test_a_failed_describe_keeps_the_set_learned_before_and_never_holds(
    aredis: Redis, error: Exception
) -> None:
    config = settings()
    await refresh(aredis, Describer("Email", "Pants"), config)
    await aredis.delete(KEYS.control("fields-refresh"))
    failing = Describer(error=error)

    if isinstance(error, ValueError):  # not Marketo's: the task logs it
        with pytest.raises(ValueError, match="x"):
            await refresh(aredis, failing, config)
    else:
        assert (await refresh(aredis, failing, config)).status == "failed"

    known = await fields.read_fields(aredis, KEYS)
    assert known is not None
    assert "pants" in known.names
    state = await RedisLimiter(aredis, config).state()
    assert state.hold_reason is None, "describe never holds the pipeline"
    if isinstance(error, CallTimeout):
        assert state.slots_in_use == 1, "Marketo may still run it: its slot stays taken"
    else:
        assert state.slots_in_use == 0


async def test_marketos_word_on_the_shared_limits_is_honoured(aredis: Redis) -> None:
    config = settings()
    limiter = RedisLimiter(aredis, config)
    await refresh(aredis, Describer(error=ThrottledError("20023", code=20023)), config)
    assert (await limiter.state()).cooldown_remaining_s > 0
    await aredis.delete(KEYS.control("fields-refresh"), LimiterKeys("leadsync").cooldown)
    await refresh(aredis, Describer(error=QuotaExceededError("20015", code=20015)), config)
    state = await limiter.state()
    assert state.quota_used_today >= state.quota_limit


async def test_at_start_a_stored_set_is_kept_and_one_refresh_runs_at_a_time(
    aredis: Redis,
) -> None:
    describe = Describer("Email")
    assert (await refresh(aredis, describe, only_if_missing=True)).status == "stored"
    assert (await refresh(aredis, describe, only_if_missing=True)).status == "present"
    assert (await refresh(aredis, describe)).status == "busy", "another refresh had the turn"
    assert describe.calls == 1


async def test_forgetting_drops_the_set(aredis: Redis) -> None:
    await refresh(aredis, Describer("Email"))
    assert await fields.forget_fields(aredis, KEYS)
    assert await fields.read_fields(aredis, KEYS) is None


async def test_a_set_without_names_or_time_reads_as_none(aredis: Redis) -> None:
    await aredis.hset(KEYS.known_fields(), mapping={LEARNED_AT_FIELD: "1.0"})
    assert await fields.read_fields(aredis, KEYS) is None
    await aredis.delete(KEYS.known_fields())
    await aredis.hset(KEYS.known_fields(), mapping={"email": "email"})
    assert await fields.read_fields(aredis, KEYS) is None


# --- which describe, per protocol --------------------------------------------------------


async def test_the_describer_follows_the_api() -> None:
    config = settings(
        marketo_endpoint="http://marketo.test/soap/mktows/2_2",
        marketo_user_id="u",
        marketo_encryption_key="k",
    )
    seen: list[bytes] = []

    def handle(body: bytes, _headers: object) -> HttpReply:
        seen.append(body)
        return HttpReply(200, "text/xml", describe_answer())

    soap = SoapApi(
        MockTransport(handle),
        endpoint="http://marketo.test/soap/mktows/2_2",
        user_id="u",
        encryption_key=SecretStr("k"),
        max_response_bytes=1 << 20,
    )
    describe = describer_for(soap, config)
    assert describe is not None
    learned = await describe()
    assert learned == LeadFieldNames(("Id", "FirstName"), SOAP_SOURCE)
    assert b"paramsDescribeMObject" in seen[0]
    assert describer_for(StubApi(lambda leads, dedup: []), config) is None
    assert DESCRIBE2_PATH == "/rest/v1/leads/describe2.json"
    assert REST_SOURCE == "REST describe2.json"


# --- the doctor --------------------------------------------------------------------------


async def test_the_doctor_says_how_many_fields_are_known_and_when(aredis: Redis) -> None:
    config = settings()
    none = await check_learned_fields(aredis, config)
    assert none.level == "WARN"
    assert "none learned yet" in none.detail

    await refresh(aredis, Describer("Email", "FirstName", "Company"), config)
    learned = await check_learned_fields(aredis, config)
    assert learned.level == "OK"
    assert "3 fields learned from Marketo's SOAP describeMObject" in learned.detail
    assert "UTC" in learned.detail

    stale = await check_learned_fields(aredis, config, now_s=time.time() + 3 * 86_400)
    assert stale.level == "WARN"

    explicit = await check_learned_fields(aredis, settings(known_fields="Email,City"))
    assert "LEADSYNC_KNOWN_FIELDS (2) overrides" in explicit.detail

    off = await check_learned_fields(aredis, settings(fields_refresh_s=0))
    assert off.level == "OK"
    await fields.forget_fields(aredis, KEYS)
    off = await check_learned_fields(aredis, settings(fields_refresh_s=0))
    assert "learning is off" in off.detail
