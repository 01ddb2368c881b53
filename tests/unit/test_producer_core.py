"""The producers' sans-I/O core, driven by hand: it asks for Redis commands and pauses,
and reads the replies it is given; no client, no socket."""

from __future__ import annotations

from typing import Any

import pytest

from producers._core import KEY_RULE_REFRESH_S, Done, Pause, ProducerCore, Send, Step, advance
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

    asked, rid = drive(core.upsert({"email": "Ann@Example.com"}), [[True, b"6", None], [b"17-0"]])

    handshake, enqueue = asked
    assert isinstance(handshake, Send)
    assert [c[0] for c in handshake.commands] == ["HSETNX", "HGET", "HGET"]
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
    drive(core.agree(), [[True, b"2", None]])

    asked, outcomes = drive(
        core.outcomes(["0-5-0", "bogus", "1-6-0"]),
        [[[], b"C1,9", {}, [(b"6-0", {})], None, {}]],
    )

    (send,) = asked
    assert isinstance(send, Send)
    assert [c[0] for c in send.commands] == ["XRANGE", "HGET", "HGETALL"] * 2
    assert send.commands[1][1:] == Keys().outcome_slot(0, "5-0")
    assert send.commands[2][1] == Keys().outcome(0, "5-0"), "the previous version's form"
    first, unknown, pending = outcomes
    assert isinstance(first, Outcome)
    assert (first.status, first.lead_id, first.enqueued_at) == (OutcomeStatus.CREATED, 9, 0.005)
    assert unknown is None
    assert pending is not None
    assert pending.status is OutcomeStatus.PENDING


def test_wait_outcome_pauses_between_looks_until_the_outcome_is_final() -> None:
    core = ProducerCore(shards=1, known_fields=())
    drive(core.agree(), [[True, b"1", None]])
    still_pending = [[(b"1-0", {})], None, {}]

    asked, outcome = drive(
        core.wait_outcome("0-1-0", timeout_s=60, poll_s=0.01),
        [still_pending, None, [[], None, {b"status": b"FAILED", b"error": b"bad"}]],
    )

    assert [type(r) for r in asked] == [Send, Pause, Send]
    assert isinstance(asked[1], Pause)
    assert asked[1].seconds == pytest.approx(0.01)
    assert outcome.status is OutcomeStatus.FAILED


def test_wait_outcomes_looks_again_only_at_the_unfinished_and_reports_progress() -> None:
    core = ProducerCore(shards=1, known_fields=())
    drive(core.agree(), [[True, b"1", None]])
    pending = [[(b"1-0", {})], None, {}]
    done = [[], b"C1,7", {}]
    progress: list[int] = []

    asked, outcomes = drive(
        core.wait_outcomes(["0-1-0", "0-2-0"], 60, 0.01, progress.append),
        [[*done, *pending], None, done],
    )

    assert [type(r) for r in asked] == [Send, Pause, Send]
    second = asked[2]
    assert isinstance(second, Send)
    assert len(second.commands) == 3, "only the unfinished request is read again"
    assert progress == [1, 2]
    assert [o.status for o in outcomes.values() if o] == [OutcomeStatus.CREATED] * 2


# --- the key rule: under REST a lead's key is the value Marketo looks it up by -----------


def enqueued(core: ProducerCore, lead: dict[str, Any]) -> tuple[int, str]:
    """(shard, key digest) of one upsert on an agreed core."""
    asked, rid = drive(core.upsert(lead), [[b"1-0"]])
    (send,) = asked
    assert isinstance(send, Send)
    return int(rid.split("-", 1)[0]), str(send.commands[0][4])


def test_under_rest_an_id_keyed_write_and_an_email_keyed_one_are_one_lead() -> None:
    """F4: upsert(marketo_id=5, email=a@x) keyed id:5 and a later upsert(email=a@x) keyed
    email:a@x: two shards, two calls at once, either order, for one Marketo lead."""
    core = ProducerCore(shards=16, known_fields=())
    drive(core.agree(), [[True, b"16", b"rest:email"]])
    with_id = enqueued(core, {"marketo_id": 5, "email": "a@x.com"})
    without = enqueued(core, {"email": "A@x.com"})
    assert with_id == without


def test_under_soap_marketo_id_comes_first_as_marketo_matches() -> None:
    core = ProducerCore(shards=16, known_fields=(), key_rule="soap")
    drive(core.agree(), [[True, b"16", None]])
    assert enqueued(core, {"marketo_id": 5, "email": "a@x.com"}) == enqueued(
        core, {"marketo_id": 5}
    )


@pytest.mark.parametrize(
    ("rule", "lead", "field"),
    [
        ("rest:email", {"marketo_id": 5}, "email"),
        ("rest:id", {"email": "a@x.com"}, "marketo_id"),
        ("rest:customerId", {"email": "a@x.com"}, "foreign_sys_person_id"),
    ],
)
def test_under_rest_a_lead_without_the_lookup_value_is_refused_before_any_write(
    rule: str, lead: dict[str, Any], field: str
) -> None:
    core = ProducerCore(shards=2, known_fields=())
    drive(core.agree(), [[True, b"2", rule.encode()]])
    with pytest.raises(InvalidLead) as refused:
        drive(core.upsert(lead), [])
    assert refused.value.field == field


def test_a_custom_lookup_field_keys_by_its_value() -> None:
    core = ProducerCore(shards=8, known_fields=())
    drive(core.agree(), [[True, b"8", b"rest:customerId"]])
    by_fsp = enqueued(
        core,
        {"email": "a@x.com", "foreign_sys_person_id": "C-1", "foreign_sys_type": "CUSTOM"},
    )
    by_attribute = enqueued(core, {"email": "b@x.com", "attributes": {"customerId": "C-1"}})
    assert by_fsp == by_attribute


def test_upsert_many_refuses_a_lead_without_the_lookup_value_and_sends_the_rest() -> None:
    core = ProducerCore(shards=2, known_fields=())
    drive(core.agree(), [[True, b"2", b"rest:email"]])
    asked, results = drive(
        core.upsert_many([{"email": "a@x.com"}, {"marketo_id": 7}]), [[[b"1-0"]]]
    )
    (send,) = asked
    assert isinstance(send, Send)
    assert len(send.commands) == 1
    assert isinstance(results[1], InvalidLead)


def test_the_stored_rule_is_looked_at_again_and_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer that started before the first REST worker follows its rule within
    KEY_RULE_REFRESH_S, without a restart."""
    now = [1000.0]
    monkeypatch.setattr("producers._core.time.monotonic", lambda: now[0])
    core = ProducerCore(shards=1, known_fields=(), key_rule="soap")
    drive(core.agree(), [[True, b"1", None]])
    assert core.route is not None
    assert core.route.key_rule == "soap"
    now[0] += KEY_RULE_REFRESH_S + 1
    asked, route = drive(core.agree(), [[b"rest:email"]])
    assert [c[0] for c in asked[0].commands] == ["HGET"]  # type: ignore[union-attr]
    assert route.key_rule == "rest:email"
