"""Partial writes, several parked writes of one lead, and REST's key kinds, step by step
with the model kit (``tests/support/model.py``): what the model-based drain test
(``test_model_drain.py``) draws at random, in the cases its checks are built on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from producers.contract import OutcomeStatus, shard_for
from tests.support.model import (
    CITY,
    COMPANY,
    FIELDS,
    PROTOCOLS,
    SEQ,
    SUCCESS,
    SUPERSEDED_CODE,
    TOKEN,
    VAL,
    Reference,
    RestWire,
    ScriptedMarketo,
    System,
    WireProtocol,
    origin,
    wire_for,
)

pytestmark = pytest.mark.integration


@asynccontextmanager
async def _model(
    redis_url: str, protocol: WireProtocol, **overrides: Any
) -> AsyncIterator[tuple[System, ScriptedMarketo, Reference]]:
    marketo = ScriptedMarketo(wire_for(protocol))
    system = System(redis_url, marketo, **{"shards": 1, "max_attempts": 1, **overrides})
    await system.start()
    try:
        yield system, marketo, Reference(unknown_field_code=marketo.wire.unknown_field_code)
    finally:
        await system.close()


async def _write(
    system: System,
    ref: Reference,
    email: str,
    fields: Sequence[str],
    value: str = "v",
    *,
    marketo_id: int | None = None,
) -> str:
    draft = ref.new_write(
        f"email:{email}", value, dedup=True, poisoned=False, fields=fields, marketo_id=marketo_id
    )
    rid = await system.enqueue(email, draft.attributes, dedup=True, marketo_id=marketo_id)
    ref.accept(replace(draft, request_id=rid))
    return rid


async def _park(system: System, marketo: ScriptedMarketo, rid: str) -> None:
    """Faults until ``rid`` runs out of attempts (max_attempts=1: one call, then parked)."""
    marketo.script.append("fault_10001")
    await system.drain(0, 0)
    await system.drain(0, 0)
    assert (await system.outcomes([rid]))[rid] is OutcomeStatus.DEAD_LETTERED


async def _settle(system: System) -> None:
    for _ in range(10):
        await system.drain(0, 0)
        if not any((await system.backlog()).values()):
            return
    raise AssertionError("the shard did not drain")


async def _check(system: System, marketo: ScriptedMarketo, ref: Reference) -> None:
    details = await system.outcome_details(list(ref.writes))
    assert not ref.observe(details.statuses, details.error_codes)
    assert not ref.unsettled(())
    assert not ref.lead_ids_agree(details.lead_ids, marketo)
    assert not ref.expected_vs_marketo(marketo)
    assert not marketo.order_violations
    assert not marketo.overlap_violations


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_parked_writes_of_one_lead_replay_merged_per_field(
    redis_url: str, protocol: WireProtocol
) -> None:
    """Write 1 sets Val, City and Company and is parked; write 2 sets City and is parked;
    write 3 sets Val and is applied. The replay sends write 1 without Val (write 3 set it
    since) and without City (write 2, replayed after it, sets it): Company alone; then
    write 2's City. Marketo ends with the per-field merge of all three, in write order."""
    async with _model(redis_url, protocol) as (system, marketo, ref):
        first = await _write(system, ref, "ann@x.com", (VAL, CITY, COMPANY), "old")
        await _park(system, marketo, first)
        second = await _write(system, ref, "ann@x.com", (CITY,), "mid")
        await _park(system, marketo, second)
        third = await _write(system, ref, "ann@x.com", (VAL,), "new")
        await _settle(system)
        replayed = await system.replay_all()
        ref.reopen(replayed.replayed + replayed.superseded, calls_so_far=len(marketo.calls))
        await _settle(system)
        await _check(system, marketo, ref)
        held = marketo.leads["email:ann@x.com"]
        by_rid = {rid: ref.writes[rid].seq for rid in (first, second, third)}
        assert {name: origin(value) for name, value in held.items()} == {
            VAL: by_rid[third],
            CITY: by_rid[second],
            COMPANY: by_rid[first],
        }
        statuses = await system.outcomes([first, second, third])
        assert all(status in SUCCESS for status in statuses.values()), statuses


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_parked_write_whose_fields_were_all_set_since_ends_superseded(
    redis_url: str, protocol: WireProtocol
) -> None:
    """A parked write every field of which a newer applied write set ends FAILED
    SUPERSEDED, not sent; invariant 2 leaves it out of the merge."""
    async with _model(redis_url, protocol) as (system, marketo, ref):
        first = await _write(system, ref, "bob@x.com", (SEQ, CITY), "old")
        await _park(system, marketo, first)
        await _write(system, ref, "bob@x.com", FIELDS, "new")
        await _settle(system)
        calls = len(marketo.calls)
        replayed = await system.replay_all()
        ref.reopen(replayed.replayed + replayed.superseded, calls_so_far=calls)
        await _settle(system)
        details = await system.outcome_details([first])
        assert (details.statuses[first], details.error_codes[first]) == (
            OutcomeStatus.FAILED,
            SUPERSEDED_CODE,
        )
        assert len(marketo.calls) == calls, "a superseded write costs no call"
        await _check(system, marketo, ref)


async def test_over_rest_a_write_naming_the_marketo_id_is_the_emails_lead(
    redis_url: str,
) -> None:
    """An app keeps the lead id of an outcome and sends it with the email next time.
    Sync Leads matches by the lookupField (email) only, and the key rule the worker stores
    makes that the key too: the id-carrying write and the email-only one are one key (one
    shard of two, merged into one record of one call), and one lead in Marketo."""
    async with _model(redis_url, "rest", shards=2) as (system, marketo, ref):
        shard = shard_for("email:cat@x.com", system.shards)
        first = await _write(system, ref, "cat@x.com", (SEQ, VAL))
        await system.drain(0, shard)
        lead_id = (await system.outcome_details([first])).lead_ids[first]
        assert lead_id is not None
        calls = len(marketo.calls)
        with_id = await _write(system, ref, "cat@x.com", (CITY,), marketo_id=lead_id)
        email_only = await _write(system, ref, "cat@x.com", (COMPANY,))
        assert {system.entry_of(rid)[0] for rid in (with_id, email_only)} == {shard}
        await system.drain(0, shard)
        (call,) = marketo.calls[calls:]
        assert call.keys == ("email:cat@x.com",), "one record for both writes"
        details = await system.outcome_details([with_id, email_only])
        assert set(details.lead_ids.values()) == {lead_id}
        assert set(marketo.leads) == {"email:cat@x.com"}
        await _check(system, marketo, ref)


def _sync_leads(records: list[dict[str, object]]) -> bytes:
    body = {"action": "createOrUpdate", "lookupField": "email", "input": records}
    return json.dumps(body).encode()


async def test_the_scripted_rest_marketo_finds_a_lead_by_the_lookup_field_only() -> None:
    """What the model's REST Marketo does with a lead's key kinds, as Sync Leads does: a
    record is its lookupField's lead; ``id`` outside updateOnly with lookupField id is
    skipped (1003); a second record of a lead in one call is skipped (1036)."""
    marketo = ScriptedMarketo(RestWire())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    await marketo.respond(_sync_leads([{"email": "Dan@X.com", "seq": "1"}]), headers)
    answer = await marketo.respond(
        _sync_leads(
            [
                {"email": "dan@x.com", "id": 1, "seq": "2"},
                {"email": "dan@x.com", "seq": "3"},
                {"email": " DAN@x.com", "seq": "4"},
            ]
        ),
        headers,
    )
    results = json.loads(answer.reply.body)["result"]
    assert [r["status"] for r in results] == ["skipped", "updated", "skipped"]
    assert [r["reasons"][0]["code"] for r in results if r["status"] == "skipped"] == [
        "1003",
        "1036",
    ]
    assert marketo.leads == {"email:dan@x.com": {SEQ: "3"}}
