"""The syncMultipleLeads request: golden files, WSDL schema validity, field-level errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from producers.contract import LeadUpsert, validate_lead
from tests.support.wsdl_schema import assert_valid_request
from worker.errors import ConfigError, InvalidLead
from worker.marketo.soap.envelope import REQUEST_HEADERS, SOAP_ACTION, build_sync_multiple_leads
from worker.marketo.soap.signing import AuthHeader

GOLDEN = Path(__file__).parents[1] / "golden"
SEED_AUTH = AuthHeader(
    user_id="demo17_1_809934544BFABAE58E5D27",
    signature="b5e21953ae9f1b263e644da5eccce9ff33802513",
    timestamp="2013-08-01T18:22:30-07:00",
)
MKTOWS = "{http://www.marketo.com/mktows/}"
BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"


def squeeze(xml: bytes) -> bytes:
    """Remove the whitespace between tags (pretty-printing), keep everything else."""
    return re.sub(rb">\s+<", b"><", xml.strip())


def seed_leads() -> list[LeadUpsert]:
    return [
        validate_lead(
            email=f"em{uid}@etestd.marketo.net",
            attributes={"Company": f"Marketo{uid}", "Phone": f"650-555-{uid}"},
        )
        for uid in (1000, 1001)
    ]


def lead_records(body: bytes) -> list[etree._Element]:
    root = etree.fromstring(body)
    return root.findall(f"{BODY}/{MKTOWS}paramsSyncMultipleLeads/leadRecordList/leadRecord")


def test_the_seed_request_is_rebuilt_byte_for_byte_modulo_whitespace() -> None:
    body = build_sync_multiple_leads(seed_leads(), auth=SEED_AUTH)
    assert squeeze(body) == squeeze((GOLDEN / "seed_request.xml").read_bytes())


def test_a_record_with_every_key_matches_its_golden_file() -> None:
    lead = validate_lead(
        email="ann.o'neil+test@example.com",
        marketo_id=1090240,
        foreign_sys_person_id="003A000001<x>",
        foreign_sys_type="SFDC",
        attributes={"FirstName": "Zoë", "Company": 'Smith & Sons "Ltd"'},
    )
    body = build_sync_multiple_leads([lead], auth=SEED_AUTH, dedup=False)
    assert squeeze(body) == squeeze((GOLDEN / "full_record_request.xml").read_bytes())


def test_golden_requests_are_valid_against_the_wsdl_schema() -> None:
    for name in ("seed_request.xml", "full_record_request.xml"):
        assert_valid_request((GOLDEN / name).read_bytes())


@pytest.mark.parametrize(
    "lead",
    [
        validate_lead(email="a@example.com"),
        validate_lead(marketo_id=2**31 - 1),
        validate_lead(foreign_sys_person_id="p-1", foreign_sys_type="netsuite"),
        validate_lead(
            foreign_sys_person_id="p-2", foreign_sys_type="CUSTOM", email="b@example.com"
        ),
        validate_lead(marketo_id=7, email="c@example.com", attributes={"Score": 12, "Opt": True}),
        validate_lead(email="d@example.com", attributes={"Note": "tab\tline\nbreak\r€ 𝄞"}),
    ],
    ids=["email", "max-id", "foreign", "foreign+email", "id+email+attrs", "whitespace+astral"],
)
@pytest.mark.parametrize("dedup", [True, False])
def test_every_built_request_validates_against_the_wsdl_schema(
    lead: LeadUpsert, dedup: bool
) -> None:
    body = build_sync_multiple_leads(
        [lead, validate_lead(email="z@example.com")], auth=SEED_AUTH, dedup=dedup
    )
    assert_valid_request(body)


def test_a_full_batch_of_300_validates_and_keeps_lead_order() -> None:
    leads = [
        validate_lead(email=f"lead{i}@example.com", attributes={"N": str(i)}) for i in range(300)
    ]
    body = build_sync_multiple_leads(leads, auth=SEED_AUTH)
    assert_valid_request(body)
    emails = [record.findtext("Email") for record in lead_records(body)]
    assert emails == [f"lead{i}@example.com" for i in range(300)]


def test_lead_fields_keep_the_schema_order_and_case() -> None:
    lead = validate_lead(
        foreign_sys_person_id="p",
        foreign_sys_type="SFDC",
        email="a@example.com",
        marketo_id=3,
        attributes={"X": "1"},
    )
    (record,) = lead_records(build_sync_multiple_leads([lead], auth=SEED_AUTH))
    assert [child.tag for child in record] == [
        "Id", "Email", "ForeignSysPersonId", "ForeignSysType", "leadAttributeList",
    ]  # fmt: skip


def test_absent_keys_and_empty_attributes_are_left_out_not_nil() -> None:
    body = build_sync_multiple_leads([validate_lead(marketo_id=9)], auth=SEED_AUTH)
    (record,) = lead_records(body)
    assert [child.tag for child in record] == ["Id"]
    assert b"nil" not in body


@pytest.mark.parametrize(("dedup", "text"), [(True, "true"), (False, "false")])
def test_dedup_enabled_is_always_sent(dedup: bool, text: str) -> None:
    body = build_sync_multiple_leads(
        [validate_lead(email="a@example.com")], auth=SEED_AUTH, dedup=dedup
    )
    params = etree.fromstring(body).find(f"{BODY}/{MKTOWS}paramsSyncMultipleLeads")
    assert params is not None
    assert params.findtext("dedupEnabled") == text


def test_values_round_trip_through_escaping_unchanged() -> None:
    value = "<b>&amp; \"quoted\" 'single' ]]> \t\n\r 𝄞"
    body = build_sync_multiple_leads(
        [validate_lead(email="a@example.com", attributes={"Bio": value})], auth=SEED_AUTH
    )
    (record,) = lead_records(body)
    assert record.findtext("leadAttributeList/attribute/attrValue") == value


def test_the_body_is_utf8_with_a_double_quoted_declaration() -> None:
    # LeadUpsert, not validate_lead: a non-ASCII address is refused at enqueue, but the
    # codec must still write any text as UTF-8.
    body = build_sync_multiple_leads([LeadUpsert(email="zoë@example.com")], auth=SEED_AUTH)
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<SOAP-ENV:Envelope ')
    assert "zoë@example.com".encode() in body


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one lead"):
        build_sync_multiple_leads([], auth=SEED_AUTH)


@pytest.mark.parametrize(
    ("lead", "field"),
    [
        (LeadUpsert(email="a\x00b@example.com"), "email"),
        (LeadUpsert(email="a@example.com", attributes={"City": "Ber\x0blin"}), "attributes.City"),
        (
            LeadUpsert(email="a@example.com", attributes={"City": "lone \ud800 surrogate"}),
            "attributes.City",
        ),
        (LeadUpsert(email="a@example.com", attributes={"Ci\x1fty": "x"}), "attributes"),
        (
            LeadUpsert(foreign_sys_person_id="p\ufffe", foreign_sys_type="SFDC"),
            "foreign_sys_person_id",
        ),
        (LeadUpsert(foreign_sys_person_id="p", foreign_sys_type=None), "foreign_sys_type"),
        (LeadUpsert(), "lead"),
    ],
    ids=[
        "nul-email",
        "vt-attr",
        "surrogate-attr",
        "ctrl-attr-name",
        "fffe-fsp",
        "fsp-no-type",
        "no-key",
    ],
)
def test_an_unserializable_value_raises_invalid_lead_naming_the_field(
    lead: LeadUpsert, field: str
) -> None:
    good = validate_lead(email="ok@example.com")
    with pytest.raises(InvalidLead) as caught:
        build_sync_multiple_leads([good, lead], auth=SEED_AUTH)
    assert caught.value.field == field
    for value in ("a\x00b", "Ber\x0blin", "\ud800", "p\ufffe"):
        assert value not in str(caught.value)


def test_an_auth_value_that_cannot_travel_in_xml_is_a_config_error() -> None:
    auth = AuthHeader(user_id="user\x07", signature="0" * 40, timestamp="2024-01-01T00:00:00+00:00")
    with pytest.raises(ConfigError, match="mktowsUserId"):
        build_sync_multiple_leads([validate_lead(email="a@example.com")], auth=auth)


def test_request_headers_name_the_operation_and_xml_content_type() -> None:
    assert SOAP_ACTION == "http://www.marketo.com/mktows/syncMultipleLeads"
    assert REQUEST_HEADERS["Content-Type"] == "text/xml; charset=utf-8"
    assert REQUEST_HEADERS["SOAPAction"].strip('"') == SOAP_ACTION


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        (b"<Email>em1000", b"<id>1</id><Email>em1000"),  # lowercase key, as in Markety PR #31
        (b"<dedupEnabled>true", b"<dedupEnabled>yes"),
        (b"<mktowsUserId>", b"<ns1:mktowsUserId>"),  # children are unqualified
    ],
    ids=["lowercase-id", "bad-boolean", "qualified-child"],
)
def test_the_schema_check_itself_rejects_malformed_requests(good: bytes, bad: bytes) -> None:
    seed = (GOLDEN / "seed_request.xml").read_bytes()
    broken = seed.replace(good, bad, 1)
    if bad.startswith(b"<ns1:"):
        broken = broken.replace(b"</mktowsUserId>", b"</ns1:mktowsUserId>", 1)
    assert broken != seed
    with pytest.raises(AssertionError, match="invalid"):
        assert_valid_request(broken)
