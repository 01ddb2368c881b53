"""Bad input loses nothing else: any mix of hostile and good records, through the real
producer, the real drain over real HTTP and the simulator, ends with every good record
CREATED or UPDATED and every bad one refused at enqueue (field-level InvalidLead) or
FAILED with Marketo's reason, at a bounded number of calls (issue 18)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from marketo_sim import SimConfig, SimulatorThread
from producers import InvalidLead, LeadProducer
from producers.contract import Keys, OutcomeStatus, parse_request_id
from tests.support.drain_kit import drain_settings
from worker.drain import Drainer
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo import SoapApi
from worker.transport import AiohttpTransport

pytestmark = pytest.mark.integration

USER, KEY = "hostile_user", "hostile-key"
#: What makes a record bad, and where it must be caught.
REFUSED_AT_ENQUEUE = ("control_char", "nan", "bad_name", "bad_email", "lone_surrogate", "inf")
FAILED_BY_MARKETO = ("unknown_field", "rejected_email")
KINDS = ("good", *REFUSED_AT_ENQUEUE, *FAILED_BY_MARKETO)


def record(index: int, kind: str, variant: int) -> dict[str, Any]:
    email = f"p{index}@example.com"
    company = {"Company": f"c{index}"}
    return {
        "good": {"email": email, "attributes": company},
        "control_char": {"email": email, "attributes": {"Company": "a\x01b"}},
        "nan": {"email": email, "attributes": {"LeadScore": float("nan")}},
        "inf": {"email": email, "attributes": {"AnnualRevenue": float("inf")}},
        "bad_name": {"email": email, "attributes": {f"My Field, {variant}": "x"}},
        "bad_email": {"email": f"p{index}@b@c.com"},
        "lone_surrogate": {"email": email, "attributes": {"Company": "x\ud800"}},
        # A field this instance does not have: the whole call faults 20105 naming it.
        "unknown_field": {"email": email, "attributes": {**company, f"Shoe{variant}": "x"}},
        # Marketo refuses the record alone (a FAILED syncStatus).
        "rejected_email": {"email": f"p{index}@invalid.example", "attributes": company},
    }[kind]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig(user_id=USER, encryption_key=KEY)) as running:
        yield running


async def drain_all(redis_url: str, sim: SimulatorThread, batch_size: int) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    wire = AiohttpTransport.create(
        request_timeout_s=10, connect_timeout_s=5, max_response_bytes=8 << 20
    )
    try:
        config = drain_settings(batch_size=batch_size, batches_per_drain=8)
        drainer = Drainer(
            ledger=Ledger.for_settings(client, config),
            api=SoapApi(
                wire,
                endpoint=sim.endpoint,
                user_id=USER,
                encryption_key=SecretStr(KEY),
                max_response_bytes=8 << 20,
            ),
            limiter=RedisLimiter(client, config),
            settings=config,
            consumer="hostile",
        )
        for _ in range(20):
            await drainer.drain(0)
            if await client.xlen(Keys().stream(0)) == 0:
                return
        raise AssertionError("the shard never emptied")
    finally:
        await wire.close()
        await client.aclose()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    mix=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(min_value=0, max_value=2)),
        min_size=1,
        max_size=80,
    )
)
def test_any_mix_of_hostile_and_good_records_costs_nothing_to_the_good_ones(
    redis_url: str, sim: SimulatorThread, mix: list[tuple[str, int]]
) -> None:
    flush = redis.Redis.from_url(redis_url)
    flush.flushdb()
    flush.close()
    sim.admin.reset()
    batch_size = 300
    producer = LeadProducer.from_url(redis_url, shards=1)
    accepted: dict[str, tuple[str, int]] = {}
    refused: list[tuple[str, InvalidLead]] = []
    try:
        for index, (kind, variant) in enumerate(mix):
            try:
                rid = producer.upsert(**record(index, kind, variant))
            except InvalidLead as exc:
                refused.append((kind, exc))
                continue
            accepted[rid] = (kind, variant)
        asyncio.run(drain_all(redis_url, sim, batch_size))
        outcomes = {rid: producer.outcome(rid) for rid in accepted}
    finally:
        producer.close()

    for kind, exc in refused:
        assert kind in REFUSED_AT_ENQUEUE, (kind, str(exc))
        assert exc.field, "a field-level message"
    for rid, (kind, variant) in accepted.items():
        assert kind not in REFUSED_AT_ENQUEUE, f"{kind} was accepted"
        outcome = outcomes[rid]
        assert outcome is not None, rid
        if kind == "good":
            assert outcome.status in (OutcomeStatus.CREATED, OutcomeStatus.UPDATED), (kind, outcome)
        else:
            assert outcome.status is OutcomeStatus.FAILED, (kind, outcome)
            assert outcome.error, "with Marketo's reason"
            if kind == "unknown_field":
                assert f"Shoe{variant}" in outcome.error
        assert parse_request_id(rid)[0] == 0
    # Calls: one per batch, plus one per batch whose records carry unknown fields (20105
    # names them all at once); never a bisection.
    batches = max(1, math.ceil(len(accepted) / batch_size))
    calls = sim.admin.summary()["calls"]
    assert calls <= 2 * batches if accepted else calls == 0, (calls, len(accepted))
