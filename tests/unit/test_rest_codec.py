"""The REST wire form of the lead contract, from Marketo's documented examples
(tests/golden/rest/): request JSON, per-record results in input order, and each
whole-call error mapped onto the branch of the error tree that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producers.contract import validate_lead
from worker.errors import (
    AuthError,
    BadRequestError,
    OutcomeUnknown,
    ProtocolError,
    QuotaExceededError,
    ReplyLost,
    ResignError,
    ThrottledError,
    TransientError,
    TransportError,
)
from worker.marketo.base import SyncStatus
from worker.marketo.rest.codec import (
    MAX_BODY_BYTES,
    RestOptions,
    build_request,
    parse_response,
)

GOLDEN = Path(__file__).parents[1] / "golden" / "rest"


def request(*leads: object, options: RestOptions | None = None, dedup: bool = True) -> dict:
    prepared = build_request(list(leads), options=options or RestOptions(), dedup=dedup)  # type: ignore[arg-type]
    return json.loads(prepared.body)


def test_a_lead_travels_with_rest_api_names_whatever_spelling_the_app_used() -> None:
    lead = validate_lead(email="a@x.com", attributes={"FirstName": "Ann", "lastName": "Lee"})
    assert request(lead) == {
        "action": "createOrUpdate",
        "lookupField": "email",
        "input": [{"firstName": "Ann", "lastName": "Lee", "email": "a@x.com"}],
    }


def test_dedup_false_is_create_duplicate_without_a_lookup_field() -> None:
    body = request(validate_lead(email="a@x.com", dedup=False), dedup=False)
    assert body == {"action": "createDuplicate", "input": [{"email": "a@x.com"}]}


def test_the_foreign_person_id_travels_as_the_configured_lookup_field() -> None:
    lead = validate_lead(foreign_sys_person_id="crm-7", foreign_sys_type="SFDC")
    options = RestOptions(lookup_field="externalPersonId", partition="EMEA")
    assert request(lead, options=options) == {
        "action": "createOrUpdate",
        "lookupField": "externalPersonId",
        "partitionName": "EMEA",
        "input": [{"externalPersonId": "crm-7"}],
    }


def test_an_id_keyed_lead_under_create_or_update_fails_without_a_call() -> None:
    """Marketo takes id only with updateOnly: leadsync answers FAILED (REST_KEY) and
    sends the other leads; with updateOnly and lookup field id it goes by id."""
    by_id = validate_lead(marketo_id=42, attributes={"City": "Oslo"})
    by_email = validate_lead(email="b@x.com")
    prepared = build_request([by_id, by_email], options=RestOptions(), dedup=True)
    assert prepared.sent == (1,)
    assert prepared.refused[0].status is SyncStatus.FAILED
    assert prepared.refused[0].error_code == "REST_KEY"
    assert "updateOnly" in (prepared.refused[0].error or "")
    update = RestOptions(action="updateOnly", lookup_field="id")
    assert request(by_id, options=update)["input"] == [{"city": "Oslo", "id": 42}]


def test_a_body_over_one_megabyte_is_split_before_it_is_sent() -> None:
    big = [validate_lead(email=f"p{i}@x.com", attributes={"Notes": "x" * 5000}) for i in range(250)]
    with pytest.raises(BadRequestError) as caught:
        build_request(big, options=RestOptions(), dedup=True)
    assert caught.value.code == 413
    assert len(build_request(big[:150], options=RestOptions(), dedup=True).body) <= MAX_BODY_BYTES


def test_results_come_in_input_order_with_skipped_reasons() -> None:
    results = parse_response(
        (GOLDEN / "sync_leads_response.json").read_bytes(),
        http_status=200,
        content_type="application/json;charset=UTF-8",
        expected=3,
    )
    assert [(r.lead_id, r.status) for r in results] == [
        (50, SyncStatus.CREATED),
        (51, SyncStatus.UPDATED),
        (None, SyncStatus.FAILED),
    ]
    assert results[2].error == "1005 Lead already exists"
    assert results[2].error_code == "1005"
    (invalid,) = parse_response(
        (GOLDEN / "skipped_1003.json").read_bytes(),
        http_status=200,
        content_type="application/json",
        expected=1,
    )
    assert invalid.error_code == "1003"
    assert "boolean_field" in (invalid.error or "")


def answer(code: str, message: str = "m") -> bytes:
    return json.dumps(
        {"requestId": "r", "success": False, "errors": [{"code": code, "message": message}]}
    ).encode()


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("601", ResignError),
        ("602", ResignError),
        ("603", AuthError),
        ("502", ReplyLost),
        ("604", TransientError),
        ("606", ThrottledError),
        ("607", QuotaExceededError),
        ("608", TransientError),
        ("609", AuthError),
        ("610", AuthError),
        ("611", TransientError),
        ("612", AuthError),
        ("615", ThrottledError),
        ("1001", AuthError),
        ("1003", AuthError),
        ("1011", AuthError),
        ("713", TransientError),
        ("799", TransientError),
    ],
)
def test_every_whole_call_error_names_what_the_drain_does(code: str, error_type: type) -> None:
    with pytest.raises(error_type) as caught:
        parse_response(answer(code), http_status=200, content_type="application/json", expected=1)
    assert type(caught.value) is error_type
    assert caught.value.code == int(code)


def test_a_configuration_error_says_what_to_fix() -> None:
    with pytest.raises(AuthError, match="LEADSYNC_MARKETO_REST_URL"):
        parse_response(answer("610"), http_status=200, content_type="application/json", expected=1)


def test_a_whole_call_1xxx_holds_with_marketos_message_and_what_to_check() -> None:
    """F18: a request-shape error fails every call alike; as a transient it cost ~32
    calls a batch before dead letters."""
    with pytest.raises(AuthError, match=r"Field 'email2' not supported.*LOOKUP_FIELD"):
        parse_response(
            answer("1011", "Field 'email2' not supported"),
            http_status=200,
            content_type="application/json",
            expected=1,
        )


def test_http_errors_and_broken_json_are_transient_or_split() -> None:
    with pytest.raises(ReplyLost):
        parse_response(b"<html>502</html>", http_status=502, content_type="text/html", expected=1)
    with pytest.raises(TransportError) as caught:
        parse_response(
            b"<html>503</html>",
            http_status=503,
            content_type="text/html",
            expected=1,
            request_written=False,
        )
    assert not isinstance(caught.value, OutcomeUnknown)
    with pytest.raises(BadRequestError):
        parse_response(b"", http_status=413, content_type=None, expected=1)
    with pytest.raises(ProtocolError, match="truncated"):
        parse_response(
            b'{"success":true,"result":[{"id":1', http_status=200, content_type=None, expected=1
        )
    with pytest.raises(ProtocolError, match="2 results for 1"):
        parse_response(
            b'{"success":true,"result":[{"id":1,"status":"created"},{"id":2,"status":"created"}]}',
            http_status=200,
            content_type="application/json",
            expected=1,
        )
    assert issubclass(ProtocolError, OutcomeUnknown)
    with pytest.raises(ProtocolError, match="deeply nested"):
        parse_response(
            b"[" * 100_000 + b"]" * 100_000, http_status=200, content_type=None, expected=1
        )


@pytest.mark.parametrize("code", ["²", "٣", "6O6"])
def test_a_code_that_is_not_plain_ascii_digits_is_no_code(code: str) -> None:
    """``str.isdigit`` takes "²" and "٣" (then ``int`` raises ValueError, outside the
    error tree); Marketo's codes are ASCII digits, anything else is no code."""
    with pytest.raises(TransientError) as caught:
        parse_response(answer(code), http_status=200, content_type="application/json", expected=1)
    assert caught.value.code is None
