"""The two describe codecs (SOAP describeMObject, REST describe2.json), checked against the
WSDL's schema and samples shaped as Marketo documents them, and the simulator's side of
describeMObject."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from lxml import etree

from marketo_sim.config import STANDARD_LEAD_FIELDS
from marketo_sim.fields import lead_record_fields
from marketo_sim.soap import (
    DescribeRequest,
    SimFault,
    SyncRequest,
    parse_operation_bytes,
    render_describe,
    render_fault,
)
from producers.contract import LeadUpsert
from tests.support.wsdl_schema import MKTOWS_NS, SOAP_ENV_NS, assert_valid_element
from worker.errors import (
    AuthError,
    ProtocolError,
    QuotaExceededError,
    ReplyLost,
    ResignError,
    ThrottledError,
    TransportError,
)
from worker.marketo.describe import LeadFieldNames, usable
from worker.marketo.rest.describe import parse_describe2
from worker.marketo.soap.describe import (
    DESCRIBE_ACTION,
    REQUEST_HEADERS,
    build_describe_mobject,
    parse_describe_response,
)
from worker.marketo.soap.envelope import build_sync_multiple_leads
from worker.marketo.soap.signing import make_auth_header

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def field(name: str, data_type: str = "string", nil_size: bool = False) -> str:
    """One MObjFieldMetadata, every child in schema order, as in Marketo's sample."""
    size = '<size xsi:nil="true" />' if nil_size else "<size>255</size>"
    return (
        f"<field><name>{name}</name><description>{name}</description>"
        '<displayName xsi:nil="true" /><sourceObject>Lead</sourceObject>'
        f"<dataType>{data_type}</dataType>{size}<isReadonly>false</isReadonly>"
        "<isUpdateBlocked>false</isUpdateBlocked><isName>false</isName>"
        "<isPrimaryKey>false</isPrimaryKey><isCustom>false</isCustom><isDynamic>false</isDynamic>"
        '<dynamicFieldRef xsi:nil="true" /><updatedAt>2010-01-01T00:00:00+00:00</updatedAt></field>'
    )


def describe_answer(object_name: str = "LeadRecord", fields: str | None = None) -> bytes:
    """successDescribeMObject in the shape of Marketo's documented sample."""
    fields = fields if fields is not None else field("Id", "integer") + field("FirstName")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV_NS}" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:ns1="{MKTOWS_NS}"><SOAP-ENV:Body><ns1:successDescribeMObject><result>'
        f"<metadata><name>{object_name}</name><description>Lead</description>"
        "<isCustom>false</isCustom><isVirtual>false</isVirtual>"
        f"<fieldList>{fields}</fieldList><updatedAt>2010-01-01T00:00:00+00:00</updatedAt>"
        "</metadata></result></ns1:successDescribeMObject></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


# --- SOAP: the request -------------------------------------------------------------------


def test_the_request_is_a_signed_params_describe_mobject_of_lead_record() -> None:
    auth = make_auth_header("user_1", "key", NOW)
    body = build_describe_mobject(auth=auth)

    root = etree.fromstring(body)
    header = root.find(f"{{{SOAP_ENV_NS}}}Header/{{{MKTOWS_NS}}}AuthenticationHeader")
    params = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{MKTOWS_NS}}}paramsDescribeMObject")
    assert header is not None
    assert params is not None
    assert_valid_element(header)
    assert_valid_element(params)
    assert [(child.tag, child.text) for child in params] == [("objectName", "LeadRecord")]
    assert header.findtext("requestSignature") == auth.signature
    assert REQUEST_HEADERS["SOAPAction"] == f'"{DESCRIBE_ACTION}"'
    assert DESCRIBE_ACTION == "http://www.marketo.com/mktows/describeMObject"


def test_the_simulator_reads_the_request_as_describe_and_a_sync_as_a_sync() -> None:
    auth = make_auth_header("user_1", "key", NOW)
    described = parse_operation_bytes(build_describe_mobject(auth=auth))
    assert isinstance(described, DescribeRequest)
    assert (described.object_name, described.auth.user_id) == ("LeadRecord", "user_1")
    sync = build_sync_multiple_leads([LeadUpsert(email="a@x.com")], auth=auth)
    assert isinstance(parse_operation_bytes(sync), SyncRequest)


def test_the_simulator_refuses_a_describe_out_of_schema() -> None:
    body = build_describe_mobject(auth=make_auth_header("u", "k", NOW))
    with pytest.raises(SimFault) as missing:
        parse_operation_bytes(body.replace(b"<objectName>LeadRecord</objectName>", b""))
    assert missing.value.code == 20017
    with pytest.raises(SimFault) as extra:
        parse_operation_bytes(body.replace(b"</objectName>", b"</objectName><x>1</x>"))
    assert extra.value.code == 20012


# --- SOAP: the answer --------------------------------------------------------------------


def test_the_documented_answer_gives_the_field_names_in_order() -> None:
    names = parse_describe_response(
        describe_answer(fields=field("Id", "integer") + field("FirstName") + field("DateofBirth")),
        http_status=200,
    )
    assert names == ("Id", "FirstName", "DateofBirth")


def test_the_sample_answer_is_valid_against_the_wsdl() -> None:
    root = etree.fromstring(describe_answer())
    success = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{MKTOWS_NS}}}successDescribeMObject")
    assert success is not None
    assert_valid_element(success)


def test_the_simulators_answer_is_valid_against_the_wsdl_and_lists_its_fields() -> None:
    fields = lead_record_fields(STANDARD_LEAD_FIELDS | {"leadsyncPersonId"}, STANDARD_LEAD_FIELDS)
    body = render_describe("LeadRecord", fields, description="Lead record")
    root = etree.fromstring(body)
    success = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{MKTOWS_NS}}}successDescribeMObject")
    assert success is not None
    assert_valid_element(success)
    names = parse_describe_response(body, http_status=200)
    assert names[0] == "Id"
    assert set(names[1:]) == STANDARD_LEAD_FIELDS | {"leadsyncPersonId"}
    custom = root.findtext(".//field[name='leadsyncPersonId']/isCustom")
    assert custom == "true"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (20014, AuthError),
        (20016, ResignError),
        (20015, QuotaExceededError),
        (20023, ThrottledError),
    ],
)
def test_a_fault_raises_its_branch_of_the_error_tree(code: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_describe_response(render_fault(SimFault(code)), http_status=500)


def test_a_gateway_page_is_reply_lost_or_never_sent() -> None:
    page = b"<html><body>504 Gateway Time-out</body></html>"
    with pytest.raises(ReplyLost):
        parse_describe_response(page, http_status=504)
    with pytest.raises(TransportError):
        parse_describe_response(page, http_status=503, request_written=False)


@pytest.mark.parametrize(
    "body",
    [
        describe_answer(object_name="ActivityRecord"),
        describe_answer(fields=""),
        b"<?xml version='1.0'?><x/>",
        describe_answer()[:200],
    ],
)
def test_an_answer_for_another_object_without_fields_or_unreadable_is_a_protocol_error(
    body: bytes,
) -> None:
    with pytest.raises(ProtocolError):
        parse_describe_response(body, http_status=200)


# --- REST: describe2.json ----------------------------------------------------------------


def describe2(fields: list[dict[str, object]]) -> bytes:
    """Describe Lead2's answer as the research notes give it (result[0].fields[])."""
    return json.dumps(
        {
            "requestId": "e42b#14272d07d78",
            "success": True,
            "result": [
                {"name": "API Lead", "searchableFields": [["email"], ["id"]], "fields": fields}
            ],
        }
    ).encode()


def test_describe2_gives_the_rest_names() -> None:
    body = describe2(
        [
            {"name": "id", "displayName": "Id", "dataType": "integer", "updateable": False},
            {"name": "email", "displayName": "Email Address", "dataType": "email", "length": 255},
            {"name": "firstName", "displayName": "First Name", "dataType": "string"},
            {"name": "dateOfBirth", "displayName": "Date of Birth", "dataType": "date"},
        ]
    )
    names = parse_describe2(body, http_status=200, content_type="application/json;charset=UTF-8")
    assert names == ("id", "email", "firstName", "dateOfBirth")


def test_the_older_describe_shape_is_read_by_rest_name_and_soap_only_fields_are_left_out() -> None:
    body = describe2(
        [
            {
                "id": 2,
                "displayName": "Company",
                "rest": {"name": "company"},
                "soap": {"name": "Company"},
            },
            {"id": 9, "displayName": "Legacy", "soap": {"name": "LegacyScore"}},
        ]
    )
    assert parse_describe2(body, http_status=200, content_type="application/json") == ("company",)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("601", ResignError),
        ("606", ThrottledError),
        ("607", QuotaExceededError),
        ("603", AuthError),
    ],
)
def test_a_whole_call_error_raises_its_branch(code: str, error: type[Exception]) -> None:
    body = json.dumps(
        {"requestId": "x", "success": False, "errors": [{"code": code, "message": "no"}]}
    ).encode()
    with pytest.raises(error):
        parse_describe2(body, http_status=200, content_type="application/json")


@pytest.mark.parametrize(
    ("body", "status", "content_type", "error"),
    [
        (b"<html>502</html>", 502, "text/html", ReplyLost),
        (b"{}", 404, "application/json", ProtocolError),
        (b"<html/>", 200, "text/html", ProtocolError),
        (b'{"success":true,"result":[{"fields":[]}]}', 200, "application/json", ProtocolError),
        (b'{"success":true,"result":[]}', 200, "application/json", ProtocolError),
        (b'{"success":tr', 200, "application/json", ProtocolError),
    ],
)
def test_unusable_answers_raise(
    body: bytes, status: int, content_type: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_describe2(body, http_status=status, content_type=content_type)


# --- both spellings ----------------------------------------------------------------------


def test_every_name_is_kept_under_its_soap_and_its_rest_spelling_case_folded() -> None:
    learned = LeadFieldNames(("FirstName", "DateofBirth", "SICCode", "sfdcId", "custom_x"), "t")
    spelled = learned.spellings()
    for name in ("firstname", "dateofbirth", "siccode", "sfdcid", "custom_x"):
        assert name in spelled
    assert spelled["firstname"] == "FirstName"
    assert all(key == key.casefold() for key in spelled)


def test_usable_names_drop_duplicates_and_blanks() -> None:
    assert usable(("Email", "", "Email", "x" * 300, "City"), "t").names == ("Email", "City")
