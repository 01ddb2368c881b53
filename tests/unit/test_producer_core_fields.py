"""The producers' sans-I/O core and the fields a worker learned from Marketo's describe:
read with the shard/key-rule handshake, looked at again every KEY_RULE_REFRESH_S, an
unknown attribute refused at enqueue by name; an explicit list wins. Driven by hand."""

from __future__ import annotations

from typing import Any

import pytest

from producers._core import KEY_RULE_REFRESH_S, ProducerCore, Send, record_lead
from producers.contract import InvalidLead, Keys
from producers.known_fields import LEARNED_AT_FIELD, encode_known_fields
from producers.wire import ENQUEUE_BATCH_LUA
from tests.unit.test_producer_core import drive

FIELDS_KEY = Keys().known_fields()


def learned(*names: str, at: float = 1_700_000_000.0) -> dict[bytes, bytes]:
    """HGETALL of a learned set as redis-py gives it (bytes), each name case-folded."""
    stored = encode_known_fields(
        {name: name for name in names}, learned_at=at, source="SOAP describeMObject", count=2
    )
    return {k.encode(): v.encode() for k, v in stored.items()}


STORED = learned("Email", "FirstName", "firstName", "DateofBirth", "dateOfBirth", "Company")


@pytest.fixture(autouse=True)
def no_known_fields_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADSYNC_KNOWN_FIELDS", raising=False)


def learning_core(stored: object = STORED, shards: int = 2) -> ProducerCore:
    core = ProducerCore(shards=shards)
    asked, _ = drive(core.agree(), [[True, str(shards).encode(), None, stored]])
    (handshake,) = asked
    assert isinstance(handshake, Send)
    assert handshake.commands[-1] == ("HGETALL", FIELDS_KEY), "in the handshake's round trip"
    return core


def upsert(core: ProducerCore, lead: dict[str, Any]) -> str:
    _, rid = drive(core.upsert(lead), [[b"1-0"]])  # type: ignore[arg-type]
    return str(rid)


def test_the_handshake_reads_the_learned_fields_in_the_same_round_trip() -> None:
    core = ProducerCore(shards=2)
    asked, route = drive(core.agree(), [[True, b"2", None, STORED]])
    (handshake,) = asked
    assert isinstance(handshake, Send)
    assert [c[0] for c in handshake.commands] == ["HSETNX", "HGET", "HGET", "HGETALL"]
    assert route.known is not None
    assert route.known.learned
    assert "firstname" in route.known.names


def test_an_unknown_attribute_is_refused_at_enqueue_by_name_before_any_write() -> None:
    core = learning_core()
    with pytest.raises(InvalidLead) as refused:
        drive(core.upsert({"email": "a@x.com", "attributes": {"Shoesize": "9"}}), [])
    assert refused.value.field == "attributes.Shoesize"
    assert "is not a field of this Marketo instance" in refused.value.reason
    assert "learned from Marketo's describe" in refused.value.reason


@pytest.mark.parametrize(
    "name", ["FirstName", "firstName", "FIRSTNAME", "DateofBirth", "dateOfBirth"]
)
def test_a_known_attribute_goes_in_either_spelling(name: str) -> None:
    core = learning_core()
    assert upsert(core, {"email": "a@x.com", "attributes": {name: "x"}}).endswith("-1-0")


@pytest.mark.parametrize("stored", [{}, [], None, {LEARNED_AT_FIELD.encode(): b"1.0"}])
def test_with_nothing_stored_any_attribute_is_accepted(stored: object) -> None:
    core = learning_core(stored)
    assert core.route is not None
    assert core.route.known is None
    upsert(core, {"email": "a@x.com", "attributes": {"Shoesize": "9"}})


def test_upsert_many_refuses_the_unknown_records_and_sends_the_rest() -> None:
    core = learning_core()
    asked, results = drive(
        core.upsert_many(
            [
                {"email": "a@x.com", "attributes": {"Company": "A"}},
                {"email": "b@x.com", "attributes": {"Pants": "x"}},
                {"email": "c@x.com"},
            ]
        ),
        [[[b"1-0", b"2-0"]]],
    )
    (send,) = asked
    assert isinstance(send, Send)
    (batch,) = send.commands  # one atomic step for the chunk's two valid records
    assert batch[:2] == ("EVAL", ENQUEUE_BATCH_LUA)
    assert batch[2] == 9  # admission, config, reshard; then stream, sequence, fields per record
    assert isinstance(results[1], InvalidLead)
    assert results[1].field == "attributes.Pants"
    assert all(isinstance(r, str) for r in (results[0], results[2]))


def test_the_api_batch_step_validates_against_the_routes_known_fields() -> None:
    core = learning_core()
    assert core.route is not None
    with pytest.raises(InvalidLead) as refused:
        record_lead({"email": "a@x.com", "attributes": {"Pants": "x"}}, core.route.known)
    assert refused.value.field == "attributes.Pants"
    record_lead({"email": "a@x.com", "attributes": {"company": "x"}}, core.route.known)


def test_the_learned_fields_are_looked_at_again_and_read_only_when_they_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("producers._core.time.monotonic", lambda: now[0])
    core = learning_core()
    version = STORED[LEARNED_AT_FIELD.encode()]

    now[0] += KEY_RULE_REFRESH_S + 1
    asked, _ = drive(core.agree(), [[None, version]])
    (look,) = asked
    assert isinstance(look, Send)
    assert look.commands[1] == ("HGET", FIELDS_KEY, LEARNED_AT_FIELD)
    assert len(asked) == 1, "the same version: the set is not read again"

    newer = learned("Email", "Shoesize", at=1_700_000_100.0)
    now[0] += KEY_RULE_REFRESH_S + 1
    asked, route = drive(core.agree(), [[None, newer[LEARNED_AT_FIELD.encode()]], [newer]])
    assert len(asked) == 2
    assert asked[1].commands == (("HGETALL", FIELDS_KEY),)  # type: ignore[union-attr]
    assert route.known is not None
    upsert(core, {"email": "a@x.com", "attributes": {"Shoesize": "9"}})
    with pytest.raises(InvalidLead):
        drive(core.upsert({"email": "a@x.com", "attributes": {"Company": "A"}}), [])

    now[0] += KEY_RULE_REFRESH_S + 1  # the set was dropped (LEADSYNC_FIELDS_REFRESH_S=0)
    _, route = drive(core.agree(), [[None, None], [{}]])
    assert route.known is None
    upsert(core, {"email": "a@x.com", "attributes": {"Anything": "x"}})


def test_an_explicit_list_wins_and_the_learned_set_is_not_read() -> None:
    core = ProducerCore(shards=2, known_fields=["Email", "Pants"])
    asked, route = drive(core.agree(), [[True, b"2", None]])
    assert [c[0] for c in asked[0].commands] == ["HSETNX", "HGET", "HGET"]  # type: ignore[union-attr]
    assert route.known is not None
    assert not route.known.learned
    upsert(core, {"email": "a@x.com", "attributes": {"pants": "x"}})
    with pytest.raises(InvalidLead) as refused:
        drive(core.upsert({"email": "a@x.com", "attributes": {"Company": "A"}}), [])
    assert "LEADSYNC_KNOWN_FIELDS" in refused.value.reason


def test_leadsync_known_fields_wins_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSYNC_KNOWN_FIELDS", "Email,City")
    core = ProducerCore(shards=1)
    assert not core.learns
    asked, _ = drive(core.agree(), [[True, b"1", None]])
    assert len(asked[0].commands) == 3  # type: ignore[union-attr]


def test_an_empty_explicit_list_accepts_any_attribute_and_learns_nothing() -> None:
    core = ProducerCore(shards=1, known_fields=())
    assert not core.learns
    drive(core.agree(), [[True, b"1", None]])
    upsert(core, {"email": "a@x.com", "attributes": {"Anything": "x"}})


def test_an_invalid_lead_still_asks_for_nothing() -> None:
    core = ProducerCore(shards=1)
    with pytest.raises(InvalidLead):
        drive(core.upsert({"email": "nope", "attributes": {"Pants": "x"}}), [])
