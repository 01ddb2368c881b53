"""Pure parts of the REST simulator: name mapping, value checks, request parsing, tokens,
record rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from marketo_sim.config import SimConfig
from marketo_sim.fields import catalog, rest_name, value_ok
from marketo_sim.identity import TokenIssuer
from marketo_sim.rest import (
    RecordResult,
    RestError,
    limit_error,
    parse_sync_leads,
    render_error,
    request_id,
)
from marketo_sim.rest_leads import RestSync, record_key, sync_record
from marketo_sim.soap import ParsedRecord
from marketo_sim.state import LeadDatabase

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rest"
LOOKUPS = frozenset({"email", "id", "crmId"})


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


# --- names and values ----------------------------------------------------------------


def test_the_rest_name_is_the_soap_name_with_a_lower_case_first_letter_bar_exceptions() -> None:
    assert [rest_name(n) for n in ("FirstName", "Email", "AnonymousIP", "crmId")] == [
        "firstName",
        "email",
        "anonymousIP",
        "crmId",
    ]
    assert (rest_name("SICCode"), rest_name("DateofBirth")) == ("sicCode", "dateOfBirth")


def test_names_that_collide_under_the_mapping_are_refused() -> None:
    with pytest.raises(ValueError, match="share the REST name"):
        SimConfig(known_fields=frozenset({"Pants", "pants"}))
    with pytest.raises(ValueError, match="custom REST field"):
        SimConfig(rest_dedupe_fields=frozenset({"CrmId"}))


@pytest.mark.parametrize(
    ("data_type", "bad"),
    # Marketo's recorded 1003 values (research §2).
    [
        ("boolean", "other"),
        ("integer", "14.1"),
        ("float", "14c"),
        ("datetime", "yesterday"),
        ("email", "bademail"),
    ],
)
def test_values_marketo_refused_are_refused(data_type: str, bad: str) -> None:
    assert not value_ok(data_type, bad)


def test_values_of_the_right_type_and_null_are_taken() -> None:
    assert all(
        value_ok(t, v)
        for t, v in [
            ("boolean", True),
            ("boolean", "false"),
            ("integer", 14),
            ("integer", "-3"),
            ("float", "1.5e3"),
            ("date", "2026-01-31"),
            ("datetime", "2026-01-31T10:00:00Z"),
            ("email", "a@example.com"),
            ("string", 5),
            ("integer", None),
        ]
    )
    assert not value_ok("string", {"nested": 1})
    assert not value_ok("email", "ünï@example.com")  # email values must be ASCII


def test_describe2_lists_every_known_field_by_rest_name() -> None:
    described = catalog(frozenset({"Email", "FirstName", "LeadScore"}), frozenset({"crmId"}))
    result = described.describe2()
    assert result["name"] == "API Lead"
    by_name = {f["name"]: f for f in result["fields"]}
    assert set(by_name) == {"id", "email", "firstName", "leadScore", "crmId"}
    assert by_name["email"] == {
        "name": "email",
        "displayName": "Email Address",
        "dataType": "email",
        "length": 255,
        "updateable": True,
        "crmManaged": False,
    }
    assert by_name["leadScore"]["dataType"] == "integer"
    assert by_name["id"]["updateable"] is False
    assert result["searchableFields"] == [["crmId"], ["email"], ["id"]]


# --- the request ---------------------------------------------------------------------


def parse(document: object, **kwargs: Any) -> Any:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_sync_leads(body, lookup_fields=LOOKUPS, max_records=300, **kwargs)


def code_of(document: object, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(RestError) as caught:
        parse(document, **kwargs)
    return caught.value.code, caught.value.message


def test_defaults_are_create_or_update_by_email() -> None:
    request = parse({"input": [{"email": "a@example.com"}]})
    assert (request.action, request.lookup_field, request.partition) == (
        "createOrUpdate",
        "email",
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"input": [{"email": "a@example.com"}]',
        b"\xff\xfe{}",
        b'{"input": [{"leadScore": NaN}]}',
        b'{"input": [], "input": [{"email": "a@example.com"}]}',
        b"[1, 2]",
        b'{"input": [5]}',
    ],
)
def test_bodies_that_are_not_a_sync_leads_object_get_609(body: bytes) -> None:
    assert code_of(body) == (609, "Invalid JSON")


def test_request_parameter_errors() -> None:
    assert code_of({"input": []})[0] == 1002
    assert code_of({"action": "upsert", "input": [{}]}) == (
        1001,
        "Invalid value '\"upsert\"'. Required of type 'action'",
    )
    assert code_of({"lookupField": "firstName", "input": [{}]}) == (
        1011,
        "Field 'firstName' not supported",
    )
    assert code_of({"action": "updateOnly", "partitionName": "Default", "input": [{}]})[0] == 1003
    assert code_of({"asyncProcessing": "true", "input": [{}]})[0] == 1001
    assert code_of({"asyncProcessing ": True, "input": [{}]})[0] == 1003
    parse({"asyncProcessing ": True, "input": [{}]}, unknown_params="ignore")


def test_more_than_300_records_fail_the_whole_call_unless_slow() -> None:
    records = [{"email": f"p{i}@example.com"} for i in range(301)]
    assert code_of({"input": records})[0] == 1003
    assert len(parse({"input": records}, oversize_error=False).records) == 301
    assert len(parse({"input": records[:300]}).records) == 300


def test_a_key_given_twice_in_a_record_is_noted() -> None:
    request = parse(b'{"input": [{"email": "a@example.com", "email": "b@example.com"}]}')
    assert request.records[0].repeated == ("email",)


def test_whole_call_errors_match_the_documented_601_example_and_live_limit_texts() -> None:
    body = json.loads(render_error("e42b#14272d07d78", RestError(601, "Unauthorized")))
    assert body == golden("error_601.json")
    texts = {
        kind: limit_error(kind, calls=100, window_s=20.0, concurrent=10).message
        for kind in ("rate", "concurrency", "quota")
    }
    assert texts == {
        "rate": "Max rate limit '100' exceeded with in '20' secs",
        "concurrency": "Concurrent access limit '10' reached",
        "quota": "Daily quota reached",
    }
    assert request_id(0xE42B, 0x14272D07D78 / 1000) == "e42b#14272d07d78"


# --- tokens --------------------------------------------------------------------------

CREDENTIALS = {"client_id": ["cid"], "client_secret": ["sec"], "grant_type": ["client_credentials"]}


def grant(issuer: TokenIssuer, now: float, params: Any = None, **kwargs: Any) -> Any:
    return issuer.grant(
        CREDENTIALS if params is None else params,
        client_id="cid",
        client_secret="sec",
        lifetime_s=100.0,
        scope="apis@example.com",
        now=now,
        **kwargs,
    )


def test_the_same_token_comes_back_with_its_remaining_lifetime_then_a_new_one() -> None:
    issuer = TokenIssuer()
    first = grant(issuer, 0.0).body
    assert set(first) == set(golden("identity_response.json"))
    assert (first["token_type"], first["expires_in"]) == ("bearer", 100)
    again = grant(issuer, 40.5).body
    assert (again["access_token"], again["expires_in"]) == (first["access_token"], 59)
    assert issuer.check(first["access_token"], 99.0) == "ok"
    later = grant(issuer, 100.0).body
    assert later["access_token"] != first["access_token"]
    assert issuer.tokens_issued == 2


def test_an_expired_token_gets_602_once_then_601() -> None:
    issuer = TokenIssuer()
    token = grant(issuer, 0.0).body["access_token"]
    assert [issuer.check(token, 100.0) for _ in range(3)] == ["expired", "invalid", "invalid"]
    assert issuer.check("not-a-token", 0.0) == "invalid"


def test_forced_expiry_and_expires_in_zero() -> None:
    issuer = TokenIssuer()
    token = grant(issuer, 0.0).body["access_token"]
    assert issuer.expire_now(5.0)
    assert issuer.check(token, 5.0) == "expired"
    zero = grant(issuer, 6.0, expires_in_zero=True).body
    assert zero["expires_in"] == 0
    assert issuer.check(zero["access_token"], 6.0) == "expired"
    assert grant(issuer, 6.0).body["access_token"] != zero["access_token"]


def test_identity_refusals() -> None:
    issuer = TokenIssuer()
    wrong = {**CREDENTIALS, "client_secret": ["nope"]}
    assert grant(issuer, 0.0, wrong).status == 401
    assert grant(issuer, 0.0, wrong).body["error"] == "unauthorized"
    assert grant(issuer, 0.0, {"client_id": ["cid"]}).status == 401
    assert grant(issuer, 0.0, {**CREDENTIALS, "grant_type": ["password"]}).status == 400
    assert grant(issuer, 0.0, {**CREDENTIALS, "client_id": ["cid", "cid"]}).status == 400
    assert (issuer.calls, issuer.refused, issuer.tokens_issued) == (5, 5, 0)


# --- record rules --------------------------------------------------------------------

FIELDS = catalog(frozenset({"Email", "FirstName", "LeadScore"}), frozenset({"crmId"}))


def run(db: LeadDatabase, document: dict[str, Any]) -> list[RecordResult]:
    request = parse(document)
    sync = RestSync(request, FIELDS, ("invalid.example",), ("Default",))
    return [sync_record(db, sync, r, call_id=1, now=0.0) for r in request.records]


def rows(results: list[RecordResult]) -> list[tuple[str, int | None, str | None]]:
    return [(r.status, r.lead_id, r.reasons[0].code if r.reasons else None) for r in results]


def test_actions_create_update_and_skip_as_documented() -> None:
    db = LeadDatabase()
    assert rows(run(db, {"input": [{"email": "a@example.com", "firstName": "Ann"}]})) == [
        ("created", 1, None)
    ]
    assert rows(run(db, {"input": [{"email": "A@example.com", "leadScore": 5}]})) == [
        ("updated", 1, None)
    ]
    assert rows(run(db, {"action": "createOnly", "input": [{"email": "a@example.com"}]})) == [
        ("skipped", None, "1005")
    ]
    assert rows(run(db, {"action": "updateOnly", "input": [{"email": "b@example.com"}]})) == [
        ("skipped", None, "1004")
    ]
    assert rows(run(db, {"action": "createDuplicate", "input": [{"email": "a@example.com"}]})) == [
        ("created", 2, None)
    ]
    assert rows(run(db, {"input": [{"email": "a@example.com"}]})) == [("skipped", None, "1007")]
    assert db.leads[1].attributes == {"FirstName": "Ann", "LeadScore": "5"}


def test_id_is_a_key_only_with_update_only_and_lookup_field_id() -> None:
    db = LeadDatabase()
    run(db, {"input": [{"email": "a@example.com"}]})
    assert rows(run(db, {"input": [{"id": 1, "firstName": "X"}]})) == [("skipped", None, "1003")]
    assert rows(run(db, {"action": "createOnly", "input": [{"id": 1}]})) == [
        ("skipped", None, "1003")
    ]
    assert rows(run(db, {"action": "updateOnly", "input": [{"id": 1}]})) == [
        ("skipped", None, "1003")
    ]
    update = {"action": "updateOnly", "lookupField": "id"}
    assert rows(run(db, {**update, "input": [{"id": 1, "firstName": "Y"}, {"id": 9}]})) == [
        ("updated", 1, None),
        ("skipped", None, "1004"),
    ]


def test_per_record_reasons_name_the_field_and_keep_input_order() -> None:
    db = LeadDatabase()
    results = run(
        db,
        {
            "input": [
                {"email": "a@example.com", "pants": 1, "hat": 2},
                {"email": "bad"},
                {"email": "x@invalid.example"},
                {"email": "c@example.com", "leadScore": "14.1"},
                {"firstName": "no lookup value"},
                {"email": "d@example.com"},
                {"email": "D@example.com"},
            ]
        },
    )
    assert [r.to_json() for r in results[:2]] == [
        {
            "status": "skipped",
            "reasons": [
                {"code": "1006", "message": "Field 'pants' not found"},
                {"code": "1006", "message": "Field 'hat' not found"},
            ],
        },
        {
            "status": "skipped",
            "reasons": [
                {"code": "1003", "message": "Invalid value for field 'email' and value 'bad'"}
            ],
        },
    ]
    assert rows(results)[2:] == [
        ("skipped", None, "1003"),
        ("skipped", None, "1003"),
        ("skipped", None, "1003"),
        ("created", 1, None),
        ("skipped", None, "1036"),
    ]


def test_a_custom_dedupe_field_finds_leads_written_by_either_protocol() -> None:
    db = LeadDatabase()
    db.write(
        None,
        email="a@example.com",
        set_email=True,
        attributes={"crmId": "c-1"},
        call_id=1,
        now=0.0,
    )
    look = {"lookupField": "crmId"}
    assert rows(run(db, {**look, "input": [{"crmId": "c-1", "firstName": "Ann"}]})) == [
        ("updated", 1, None)
    ]
    run(db, {**look, "input": [{"crmId": "c-2", "email": "b@example.com"}]})
    run(db, {**look, "input": [{"crmId": "c-2", "email": "c@example.com"}]})
    assert len(db.leads) == 2
    assert db.leads[2].email == "c@example.com"
    assert db.matches("crmId", "c-2") == [2]


def test_a_partition_the_user_may_not_use_is_refused() -> None:
    db = LeadDatabase()
    assert rows(run(db, {"partitionName": "EMEA", "input": [{"email": "a@example.com"}]})) == [
        ("skipped", None, "1008")
    ]
    assert rows(run(db, {"partitionName": "Default", "input": [{"email": "a@example.com"}]})) == [
        ("created", 1, None)
    ]


def test_soap_and_rest_share_the_lead_database() -> None:
    db = LeadDatabase()
    db.sync(ParsedRecord(email="a@example.com"), dedup=True, call_id=1, now=0.0)
    assert rows(run(db, {"input": [{"email": "a@example.com", "firstName": "Ann"}]})) == [
        ("updated", 1, None)
    ]
    assert [w.protocol for w in db.leads[1].history] == ["soap", "rest"]


def test_record_keys_spell_the_lead_key_for_the_call_log() -> None:
    request = parse(
        {
            "lookupField": "crmId",
            "input": [{"crmId": "c-1", "email": "a@example.com"}, {"email": "B@example.com"}],
        }
    )
    assert [record_key(r, "crmId") for r in request.records] == [
        "field:crmId:c-1",
        "email:b@example.com",
    ]
    assert record_key(parse({"input": [{"id": 7}]}).records[0], "id") == "id:7"
