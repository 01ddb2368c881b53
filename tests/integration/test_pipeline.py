"""The pipeline end to end: real Redis, a real Celery worker subprocess, the simulator over HTTP."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from marketo_sim.config import SimConfig
from tests.support.pipeline import running_pipeline

pytestmark = pytest.mark.integration


def test_ten_thousand_upserts_reach_a_final_outcome_and_marketo_holds_the_last_write(
    redis_url: str,
) -> None:
    rng = random.Random(3)
    people = [f"person{i}@example.com" for i in range(8000)]
    last_company: dict[str, str] = {}
    records = []
    for n in range(10_500):
        email = rng.choice(people) if n > 2000 and rng.random() < 0.3 else people[n % len(people)]
        company = f"Company {n}"
        last_company[email] = company
        # Mixed case on purpose: the lead key is trimmed and lower-cased.
        shown = email.upper() if rng.random() < 0.1 else email
        records.append({"email": shown, "attributes": {"Company": company, "FirstName": "X"}})

    with running_pipeline(redis_url, sim_config=SimConfig(latency_s=0.02)) as pipeline:
        request_ids = pipeline.producer.upsert_many(records)
        assert all(isinstance(r, str) for r in request_ids)
        pipeline.start_worker(concurrency=4)
        outcomes = pipeline.wait_all([str(r) for r in request_ids], timeout_s=180)
        calls = pipeline.sim.admin.calls()
        summary = pipeline.sim.admin.summary()
        leads = pipeline.sim.admin.leads()

    missing = [rid for rid, o in outcomes.items() if o is None]
    assert not missing, f"{len(missing)} requests without a final outcome"
    statuses = Counter(o.status.value for o in outcomes.values() if o)
    assert set(statuses) <= {"CREATED", "UPDATED"}, statuses
    assert max(len(c["keys"]) for c in calls) <= 300
    assert summary["keys_in_concurrent_calls"] == 0
    by_email = {lead["email"].lower(): lead for lead in leads}
    assert len(by_email) == len(last_company), "one Marketo lead per person"
    wrong = [
        e
        for e, company in last_company.items()
        if by_email[e]["attributes"].get("Company") != company
    ]
    assert not wrong, f"{len(wrong)} leads do not hold their last written value"


def test_a_record_marketo_rejects_fails_alone_while_the_rest_of_its_batch_succeeds(
    redis_url: str,
) -> None:
    with running_pipeline(redis_url, shards=1) as pipeline:
        good = [{"email": f"ok{i}@example.com", "attributes": {"Company": "A"}} for i in range(120)]
        bad = {"email": "nobody@invalid.example", "attributes": {"Company": "A"}}
        ids = pipeline.producer.upsert_many([*good[:60], bad, *good[60:]])
        pipeline.start_worker(concurrency=1)
        outcomes = pipeline.wait_all([str(r) for r in ids], timeout_s=60)
        calls = pipeline.sim.admin.calls()

    bad_outcome = outcomes[str(ids[60])]
    assert bad_outcome is not None
    assert bad_outcome.status.value == "FAILED"
    assert bad_outcome.error
    others = [o for rid, o in outcomes.items() if rid != ids[60]]
    assert all(o is not None and o.status.value == "CREATED" for o in others)
    assert any(len(c["keys"]) == 121 for c in calls), "the bad record rode in the same call"


def test_an_unknown_field_is_isolated_by_splitting_and_fails_with_marketos_code(
    redis_url: str,
) -> None:
    with running_pipeline(redis_url, shards=1) as pipeline:
        good = [{"email": f"ok{i}@example.com", "attributes": {"Company": "A"}} for i in range(40)]
        poison = {"email": "poison@example.com", "attributes": {"NoSuchField": "x"}}
        ids = pipeline.producer.upsert_many([*good[:17], poison, *good[17:]])
        pipeline.start_worker(concurrency=1)
        outcomes = pipeline.wait_all([str(r) for r in ids], timeout_s=60)

    poisoned = outcomes[str(ids[17])]
    assert poisoned is not None
    assert poisoned.status.value == "FAILED"
    assert poisoned.error_code == "20105"
    assert all(
        o is not None and o.status.value == "CREATED"
        for rid, o in outcomes.items()
        if rid != ids[17]
    )
