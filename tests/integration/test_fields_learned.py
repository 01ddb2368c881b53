"""Issue 18, the instance's fields learned, over real HTTP: the refresh over SOAP
(describeMObject) and over REST (describe2.json) stores the simulator's fields in Redis;
then a real LeadProducer, AsyncLeadProducer and the HTTP API refuse an unknown attribute at
enqueue with a field-level message and accept a known one in either spelling. And the
simulator's describeMObject: signed, counted and limited like any call."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from marketo_sim import SimConfig, SimulatorThread
from marketo_sim.config import STANDARD_LEAD_FIELDS
from marketo_sim.fields import rest_name
from producers import AsyncLeadProducer, InvalidLead, LeadProducer
from producers.keys import Keys
from tests.support.api_kit import running_api
from tests.support.pipeline import running_pipeline, wait_for
from worker.errors import BadRequestError, QuotaExceededError, TransientError
from worker.limits import RedisLimiter
from worker.marketo.describe import REST_SOURCE, SOAP_SOURCE, describer_for
from worker.marketo.factory import api_for
from worker.marketo.soap.describe import (
    REQUEST_HEADERS,
    build_describe_mobject,
    describe_lead_fields,
    parse_describe_response,
)
from worker.marketo.soap.signing import make_auth_header
from worker.ops import fields
from worker.settings import Settings
from worker.transport import AiohttpTransport

pytestmark = pytest.mark.integration

USER, KEY = "fields_user", "fields-key"
CLIENT, SECRET = "fields-client", "fields-secret"
CUSTOM = "leadsyncPersonId"  # a custom field, the same in both protocols
SIM_FIELDS = STANDARD_LEAD_FIELDS | {CUSTOM}
KEY_SECRET = SecretStr(KEY)


@pytest.fixture(autouse=True)
def no_known_fields_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADSYNC_KNOWN_FIELDS", raising=False)
    monkeypatch.delenv("LEADSYNC_KEY_PREFIX", raising=False)


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig(
        user_id=USER,
        encryption_key=KEY,
        client_id=CLIENT,
        client_secret=SECRET,
        known_fields=SIM_FIELDS,
    )
    with SimulatorThread(config) as running:
        yield running


def settings_for(sim: SimulatorThread, redis_url: str, api: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        marketo_api=api,  # type: ignore[arg-type]
        marketo_endpoint=sim.endpoint,
        marketo_user_id=USER,
        marketo_encryption_key=KEY,  # type: ignore[arg-type]
        marketo_rest_url=sim.rest_base_url,
        marketo_client_id=CLIENT,
        marketo_client_secret=SECRET,  # type: ignore[arg-type]
        rate_limit_calls=1000,
    )


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    made = AiohttpTransport.create(
        request_timeout_s=10, connect_timeout_s=5, max_response_bytes=1 << 22
    )
    yield made
    await made.close()


async def learn(
    sim: SimulatorThread, aredis: Redis, transport: AiohttpTransport, redis_url: str, api: str
) -> fields.FieldsRefresh:
    """One refresh as the worker's task runs it, over the real wire."""
    settings = settings_for(sim, redis_url, api)
    describe = describer_for(api_for(settings, transport, aredis), settings)
    assert describe is not None
    return await fields.refresh_fields(
        aredis, Keys(), RedisLimiter(aredis, settings), describe, settings, holder="fields:it"
    )


@pytest.mark.parametrize(("api", "source"), [("soap", SOAP_SOURCE), ("rest", REST_SOURCE)])
async def test_the_refresh_stores_the_simulators_fields(
    sim: SimulatorThread,
    aredis: Redis,
    transport: AiohttpTransport,
    redis_url: str,
    api: str,
    source: str,
) -> None:
    report = await learn(sim, aredis, transport, redis_url, api)

    assert report.status == "stored", report
    known = await fields.read_fields(aredis, Keys())
    assert known is not None
    assert known.source == source
    wanted = {name.casefold() for name in SIM_FIELDS} | {
        rest_name(name).casefold() for name in SIM_FIELDS
    }
    assert wanted <= known.names
    assert "id" in known.names
    assert "shoesize" not in known.names
    summary = sim.admin.summary()
    assert summary["calls_by_protocol"] == {api: 1}, "one describe call, counted"
    (call,) = sim.admin.calls()
    assert (call["operation"], call["outcome"]) == ("describe", "ok")


@pytest.mark.parametrize("api", ["soap", "rest"])
async def test_a_producer_refuses_an_unknown_attribute_and_takes_a_known_one_in_either_spelling(
    sim: SimulatorThread,
    aredis: Redis,
    transport: AiohttpTransport,
    redis_url: str,
    api: str,
) -> None:
    assert (await learn(sim, aredis, transport, redis_url, api)).status == "stored"

    def use_sync_producer() -> None:
        with LeadProducer.from_url(redis_url) as producer:
            with pytest.raises(InvalidLead) as refused:
                producer.upsert(email="ann@example.com", attributes={"Shoesize": "9"})
            assert refused.value.field == "attributes.Shoesize"
            assert "is not a field of this Marketo instance" in refused.value.reason
            assert "learned from Marketo's describe" in refused.value.reason
            for name in ("FirstName", "firstName", "DateofBirth", "dateOfBirth", CUSTOM):
                assert producer.upsert(email="ann@example.com", attributes={name: "1990-01-01"})
            results = producer.upsert_many(
                [
                    {"email": "a@example.com", "attributes": {"company": "A"}},
                    {"email": "b@example.com", "attributes": {"Pants": "x"}},
                ]
            )
            assert isinstance(results[0], str)
            assert isinstance(results[1], InvalidLead)
            assert results[1].field == "attributes.Pants"

    await asyncio.to_thread(use_sync_producer)

    async with AsyncLeadProducer.from_url(redis_url) as producer:
        with pytest.raises(InvalidLead) as refused:
            await producer.upsert(email="ann@example.com", attributes={"Shoesize": "9"})
        assert refused.value.field == "attributes.Shoesize"
        assert await producer.upsert(email="ann@example.com", attributes={"lastName": "Lee"})


async def test_the_http_api_refuses_an_unknown_attribute_one_record_at_a_time(
    sim: SimulatorThread, aredis: Redis, transport: AiohttpTransport, redis_url: str
) -> None:
    assert (await learn(sim, aredis, transport, redis_url, "soap")).status == "stored"
    async with running_api(redis_url) as api:
        key = await api.key("web", "write", "read")
        one = await api.call(
            "POST",
            "/v1/leads",
            key=key,
            json_body={"email": "ann@example.com", "attributes": {"Shoesize": "9"}},
        )
        assert one.status == 422
        assert one.body["errors"][0]["field"] == "attributes.Shoesize"
        batch = await api.call(
            "POST",
            "/v1/leads:batch",
            key=key,
            json_body={
                "records": [
                    {"email": "a@example.com", "attributes": {"firstName": "A"}},
                    {"email": "b@example.com", "attributes": {"Shoesize": "9"}},
                ]
            },
        )
        assert batch.status == 200
        first, second = batch.body["results"]
        assert "request_id" in first
        assert second["errors"][0]["field"] == "attributes.Shoesize"
        assert "learned from Marketo's describe" in second["errors"][0]["message"]
        assert await api.backlog() == 1


async def test_a_configured_list_still_wins_over_the_learned_one(
    sim: SimulatorThread,
    aredis: Redis,
    transport: AiohttpTransport,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (await learn(sim, aredis, transport, redis_url, "soap")).status == "stored"
    monkeypatch.setenv("LEADSYNC_KNOWN_FIELDS", "Email,Shoesize")

    def use() -> None:
        with LeadProducer.from_url(redis_url) as producer:
            assert producer.upsert(email="ann@example.com", attributes={"Shoesize": "9"})
            with pytest.raises(InvalidLead) as refused:
                producer.upsert(email="ann@example.com", attributes={"FirstName": "Ann"})
            assert "LEADSYNC_KNOWN_FIELDS" in refused.value.reason

    await asyncio.to_thread(use)


# --- the simulator's describeMObject -----------------------------------------------------


def post(sim: SimulatorThread, body: bytes, action: str | None = None) -> tuple[int, bytes]:
    headers = dict(REQUEST_HEADERS)
    if action is not None:
        headers["SOAPAction"] = f'"{action}"'
    request = urllib.request.Request(sim.endpoint, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def describe_body(key: str = KEY, object_name: str = "LeadRecord") -> bytes:
    return build_describe_mobject(auth=make_auth_header(USER, key), object_name=object_name)


def test_describe_is_signed(sim: SimulatorThread) -> None:
    status, body = post(sim, describe_body(key="wrong"))
    assert status == 500
    assert b"<code>20014</code>" in body


def test_describe_counts_against_the_quota_like_any_call(sim: SimulatorThread) -> None:
    sim.admin.configure(daily_quota=1)
    status, body = post(sim, describe_body())
    assert status == 200
    assert "Id" in parse_describe_response(body, http_status=status)
    status, body = post(sim, describe_body())
    with pytest.raises(QuotaExceededError):
        parse_describe_response(body, http_status=status)


def test_describe_counts_against_the_rate_window_shared_with_sync(sim: SimulatorThread) -> None:
    sim.admin.configure(rate_limit_calls=2)
    assert post(sim, describe_body())[0] == 200
    assert post(sim, describe_body())[0] == 200
    status, body = post(sim, describe_body())
    assert (status, b"<code>20023</code>" in body) == (500, True)


def test_a_soap_action_that_does_not_match_the_body_is_unsupported(sim: SimulatorThread) -> None:
    status, body = post(sim, describe_body(), "http://www.marketo.com/mktows/syncMultipleLeads")
    assert status == 500
    assert b"<code>20019</code>" in body


def test_only_lead_record_is_described(sim: SimulatorThread) -> None:
    status, body = post(sim, describe_body(object_name="Opportunity"))
    with pytest.raises(BadRequestError) as refused:
        parse_describe_response(body, http_status=status)
    assert refused.value.code == 20110


async def test_the_describe_call_reaches_the_simulator_over_aiohttp(
    sim: SimulatorThread, transport: AiohttpTransport
) -> None:
    sim.admin.configure(fault_internal_10001_rate=1.0)
    with pytest.raises(TransientError):
        await describe_lead_fields(
            transport, endpoint=sim.endpoint, user_id=USER, encryption_key=KEY_SECRET
        )


# --- a real worker learns them at start --------------------------------------------------


@pytest.mark.parametrize("api", ["soap", "rest"])
def test_a_worker_learns_the_fields_at_start_and_producers_refuse_unknown_ones(
    redis_url: str, api: str
) -> None:
    env = {"LEADSYNC_FIELDS_REFRESH_S": "21600"}
    with running_pipeline(redis_url, settings_env=env, shards=2, api=api) as pipeline:
        pipeline.start_worker(concurrency=1)
        keys = Keys()

        def stored() -> bool:
            with LeadProducer.from_url(redis_url, shards=2) as producer:
                route = producer._core.route
                return route is not None and route.known is not None

        assert wait_for(stored, 40), pipeline.logs()[-3000:]
        calls = pipeline.sim.admin.calls()
        assert [c["operation"] for c in calls] == ["describe"], "once, at start"
        with LeadProducer.from_url(redis_url, shards=2) as producer:
            with pytest.raises(InvalidLead) as refused:
                producer.upsert(email="ann@example.com", attributes={"Shoesize": "9"})
            assert refused.value.field == "attributes.Shoesize"
            rid = producer.upsert(email="ann@example.com", attributes={"firstName": "Ann"})
            outcome = producer.wait_outcome(rid, timeout_s=30)
        assert outcome.status.value == "CREATED", outcome
        assert keys.known_fields().endswith(":fields")
