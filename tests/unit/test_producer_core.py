"""The producers' sans-I/O core, driven by hand: it asks for Redis commands and pauses,
and reads the replies it is given; no client, no socket."""

from __future__ import annotations

from typing import Any

import pytest

from producers._core import Done, Pause, ProducerCore, Send, Step, advance
from producers.contract import InvalidLead, Keys, Outcome, OutcomeStatus, shard_for


def drive(step: Step[Any], answers: list[Any]) -> tuple[list[Send | Pause], Any]:
    """Run ``step`` on scripted answers; return what it asked for and its result."""
    asked: list[Send | Pause] = []
    request = advance(step, None)
    while not isinstance(request, Done):
        asked.append(request)
        request = advance(step, answers.pop(0))
    assert answers == [], "unused answers"
    return asked, request.value


def test_the_first_operation_agrees_the_shard_count_then_sends_one_enqueue() -> None:
    core = ProducerCore(shards=4, known_fields=())

    asked, rid = drive(core.upsert({"email": "Ann@Example.com"}), [[True, b"6"], [b"17-0"]])

    handshake, enqueue = asked
    assert isinstance(handshake, Send)
    assert [c[0] for c in handshake.commands] == ["HSETNX", "HGET"]
    assert isinstance(enqueue, Send)
    assert [c[0] for c in enqueue.commands] == ["EVAL"]
    shard = shard_for("email:ann@example.com", 6)  # the stored count wins
    assert rid == f"{shard}-17-0"
    assert enqueue.commands[0][3] == Keys().stream(shard)


def test_an_invalid_lead_asks_for_nothing() -> None:
    core = ProducerCore(shards=4, known_fields=())
    with pytest.raises(InvalidLead):
        drive(core.upsert({"email": "nope"}), [])


def test_outcomes_ask_once_for_every_well_formed_id_and_answer_in_order() -> None:
    core = ProducerCore(shards=2, known_fields=())
    drive(core.agree(), [[True, b"2"]])

    asked, outcomes = drive(
        core.outcomes(["0-5-0", "bogus", "1-6-0"]),
        [[[], {b"status": b"CREATED", b"lead_id": b"9"}, [(b"6-0", {})], {}]],
    )

    (send,) = asked
    assert isinstance(send, Send)
    assert [c[0] for c in send.commands] == ["XRANGE", "HGETALL", "XRANGE", "HGETALL"]
    first, unknown, pending = outcomes
    assert isinstance(first, Outcome)
    assert (first.status, first.lead_id, first.enqueued_at) == (OutcomeStatus.CREATED, 9, 0.005)
    assert unknown is None
    assert pending is not None
    assert pending.status is OutcomeStatus.PENDING


def test_wait_outcome_pauses_between_looks_until_the_outcome_is_final() -> None:
    core = ProducerCore(shards=1, known_fields=())
    drive(core.agree(), [[True, b"1"]])
    still_pending = [[(b"1-0", {})], {}]

    asked, outcome = drive(
        core.wait_outcome("0-1-0", timeout_s=60, poll_s=0.01),
        [still_pending, None, [[], {b"status": b"FAILED", b"error": b"bad"}]],
    )

    assert [type(r) for r in asked] == [Send, Pause, Send]
    assert isinstance(asked[1], Pause)
    assert asked[1].seconds == pytest.approx(0.01)
    assert outcome.status is OutcomeStatus.FAILED


def test_wait_outcomes_looks_again_only_at_the_unfinished_and_reports_progress() -> None:
    core = ProducerCore(shards=1, known_fields=())
    drive(core.agree(), [[True, b"1"]])
    pending = [[(b"1-0", {})], {}]
    done = [[], {b"status": b"CREATED", b"lead_id": b"7"}]
    progress: list[int] = []

    asked, outcomes = drive(
        core.wait_outcomes(["0-1-0", "0-2-0"], 60, 0.01, progress.append),
        [[*done, *pending], None, done],
    )

    assert [type(r) for r in asked] == [Send, Pause, Send]
    second = asked[2]
    assert isinstance(second, Send)
    assert len(second.commands) == 2, "only the unfinished request is read again"
    assert progress == [1, 2]
    assert [o.status for o in outcomes.values() if o] == [OutcomeStatus.CREATED] * 2
