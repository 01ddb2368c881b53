"""The simulator's own request interpretation and its response / fault rendering."""

from __future__ import annotations

import pytest
from lxml import etree

from marketo_sim.soap import (
    MKTOWS_NS,
    SOAP_ENV_NS,
    SimFault,
    SyncStatus,
    parse_request_bytes,
    render_doctype_bomb,
    render_fault,
    render_success,
    render_truncated,
)
from tests.support.wsdl_schema import assert_valid_element
from worker.errors import BadRequestError, ProtocolError
from worker.marketo.soap.response import parse_sync_response

AUTH = (
    "<ns1:AuthenticationHeader><mktowsUserId>u</mktowsUserId>"
    "<requestSignature>s</requestSignature>"
    "<requestTimestamp>2013-08-01T18:22:30-07:00</requestTimestamp></ns1:AuthenticationHeader>"
)
RECORD = "<leadRecord><Email>a@example.com</Email></leadRecord>"


def envelope(
    body: str = f"<leadRecordList>{RECORD}</leadRecordList><dedupEnabled>true</dedupEnabled>",
    *,
    header: str = AUTH,
    operation: str = "ns1:paramsSyncMultipleLeads",
    env_ns: str = SOAP_ENV_NS,
) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><SOAP-ENV:Envelope xmlns:SOAP-ENV="{env_ns}" '
        f'xmlns:ns1="{MKTOWS_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<SOAP-ENV:Header>{header}</SOAP-ENV:Header>"
        f"<SOAP-ENV:Body><{operation}>{body}</{operation}></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


def code_of(body: bytes, **kwargs: object) -> int:
    with pytest.raises(SimFault) as caught:
        parse_request_bytes(body, **kwargs)  # type: ignore[arg-type]
    return caught.value.code


def test_a_well_formed_request_is_interpreted() -> None:
    parsed = parse_request_bytes(envelope())
    assert parsed.auth.user_id == "u"
    assert parsed.dedup is True
    assert [r.email for r in parsed.records] == ["a@example.com"]


def test_prefixes_do_not_matter_only_namespaces() -> None:
    # JAX-WS style: other prefixes, a default namespace and xmlns="" on the children.
    body = (
        f'<S:Envelope xmlns:S="{SOAP_ENV_NS}"><S:Header>'
        f'<AuthenticationHeader xmlns="{MKTOWS_NS}"><mktowsUserId xmlns="">u</mktowsUserId>'
        '<requestSignature xmlns="">s</requestSignature>'
        '<requestTimestamp xmlns="">t</requestTimestamp></AuthenticationHeader></S:Header>'
        f'<S:Body><ns2:paramsSyncMultipleLeads xmlns:ns2="{MKTOWS_NS}"><leadRecordList>'
        f"{RECORD}</leadRecordList></ns2:paramsSyncMultipleLeads></S:Body></S:Envelope>"
    ).encode()
    parsed = parse_request_bytes(body)
    assert parsed.dedup is None
    assert parsed.records[0].email == "a@example.com"


def test_a_soap_1_2_envelope_is_not_understood() -> None:
    assert code_of(envelope(env_ns="http://www.w3.org/2003/05/soap-envelope")) == 20012


def test_malformed_xml_is_not_understood() -> None:
    assert code_of(envelope()[:-20]) == 20012


def test_a_doctype_in_the_request_is_not_understood() -> None:
    body = envelope().replace(b"?>", b'?><!DOCTYPE x [<!ENTITY e "v">]>', 1)
    assert code_of(body) == 20012


def test_another_operation_is_unsupported() -> None:
    assert code_of(envelope(operation="ns1:paramsSyncLead")) == 20019


def test_a_missing_authentication_header_is_an_invalid_request() -> None:
    assert code_of(envelope(header="")) == 20017


def test_a_missing_signature_is_an_invalid_request() -> None:
    header = AUTH.replace("<requestSignature>s</requestSignature>", "")
    assert code_of(envelope(header=header)) == 20017


def test_a_missing_lead_record_list_is_an_invalid_request() -> None:
    assert code_of(envelope("<dedupEnabled>true</dedupEnabled>")) == 20017


def test_an_empty_lead_record_list_is_an_invalid_request() -> None:
    assert code_of(envelope("<leadRecordList></leadRecordList>")) == 20017


def test_qualified_children_are_not_understood() -> None:
    body = f"<ns1:leadRecordList>{RECORD}</ns1:leadRecordList>"
    assert code_of(envelope(body)) == 20012


def test_lead_record_children_out_of_schema_order_are_not_understood() -> None:
    record = "<leadRecord><Email>a@example.com</Email><Id>5</Id></leadRecord>"
    assert code_of(envelope(f"<leadRecordList>{record}</leadRecordList>")) == 20012


def test_a_lowercase_key_element_is_not_understood() -> None:
    record = "<leadRecord><id>5</id><Email>a@example.com</Email></leadRecord>"
    assert code_of(envelope(f"<leadRecordList>{record}</leadRecordList>")) == 20012


def test_a_non_integer_id_is_not_understood() -> None:
    record = "<leadRecord><Id>12x</Id></leadRecord>"
    assert code_of(envelope(f"<leadRecordList>{record}</leadRecordList>")) == 20012


def test_an_id_beyond_xs_int_is_not_understood() -> None:
    record = f"<leadRecord><Id>{2**31}</Id></leadRecord>"
    assert code_of(envelope(f"<leadRecordList>{record}</leadRecordList>")) == 20012


def test_an_unknown_foreign_sys_type_is_not_understood() -> None:
    record = "<leadRecord><ForeignSysPersonId>1</ForeignSysPersonId><ForeignSysType>X</ForeignSysType></leadRecord>"
    assert code_of(envelope(f"<leadRecordList>{record}</leadRecordList>")) == 20012


def test_an_attribute_without_a_value_is_an_invalid_request() -> None:
    record = (
        "<leadRecord><Email>a@example.com</Email><leadAttributeList><attribute>"
        "<attrName>City</attrName></attribute></leadAttributeList></leadRecord>"
    )
    assert code_of(envelope(f"<leadRecordList>{record}</leadRecordList>")) == 20017


def test_nil_elements_read_as_absent() -> None:
    record = '<leadRecord><Id xsi:nil="true"/><Email>a@example.com</Email></leadRecord>'
    (parsed,) = parse_request_bytes(envelope(f"<leadRecordList>{record}</leadRecordList>")).records
    assert parsed.lead_id is None
    assert parsed.key == "email:a@example.com"


def test_the_java_samples_qualified_lead_attribute_list_is_caught() -> None:
    # The official Java sample builds leadAttributeList with the mktows namespace.
    record = (
        "<leadRecord><Email>t@t.com</Email><ns1:leadAttributeList><attribute>"
        "<attrName>FirstName</attrName><attrValue>George</attrValue></attribute>"
        "</ns1:leadAttributeList></leadRecord>"
    )
    body = envelope(f"<leadRecordList>{record}</leadRecordList>")
    assert code_of(body) == 20012
    (lenient,) = parse_request_bytes(body, unknown_elements="ignore").records
    assert lenient.attributes == ()  # what Marketo's lenient binding would have stored


def test_the_ruby_samples_lowercase_email_and_capitalised_true() -> None:
    # Savon turns :email into <email> and the sample sends dedupEnabled "True".
    record = "<leadRecord><email>em1000@etestd.marketo.net</email></leadRecord>"
    body = envelope(f"<leadRecordList>{record}</leadRecordList><dedupEnabled>True</dedupEnabled>")
    assert code_of(body) == 20012
    parsed = parse_request_bytes(body, unknown_elements="ignore")
    assert parsed.dedup is True
    assert parsed.records[0].key is None


def test_comments_and_cdata_do_not_change_values() -> None:
    record = "<leadRecord><Email>a<!-- x -->@<![CDATA[example.com]]></Email></leadRecord>"
    (parsed,) = parse_request_bytes(envelope(f"<leadRecordList>{record}</leadRecordList>")).records
    assert parsed.email == "a@example.com"


def test_a_success_response_is_schema_valid_and_read_by_the_client() -> None:
    statuses = [SyncStatus(1, "CREATED"), SyncStatus(0, "FAILED", "Lead not found <&>")]
    body = render_success(statuses)
    success = etree.fromstring(body).find(
        f"{{{SOAP_ENV_NS}}}Body/{{{MKTOWS_NS}}}successSyncMultipleLeads"
    )
    assert success is not None
    assert_valid_element(success)
    results = parse_sync_response(body, http_status=200, expected_count=2)
    assert [(str(r.status), r.error) for r in results] == [
        ("CREATED", None),
        ("FAILED", "Lead not found <&>"),
    ]
    assert results[0].lead_id == 1


def test_a_fault_has_marketos_shape() -> None:
    body = render_fault(
        SimFault(20105, "syncMultipleLeads operation failed: unknown fields for import: Pants")
    )
    root = etree.fromstring(body)
    assert root.findtext(".//faultcode") == "SOAP-ENV:Client"
    assert root.findtext(".//faultstring") == "20105 - Unknown lead field"
    exception = root.find(f".//detail/{{{MKTOWS_NS}}}serviceException")
    assert exception is not None
    assert [child.tag for child in exception] == ["name", "message", "code"]
    assert exception.findtext("message", "").endswith("Pants (20105)")
    with pytest.raises(BadRequestError) as caught:
        parse_sync_response(body, http_status=500, expected_count=1, content_type="text/xml")
    assert caught.value.code == 20105


def test_truncated_and_doctype_responses_are_refused_by_the_client() -> None:
    for body in (render_truncated([SyncStatus(1, "CREATED")]), render_doctype_bomb()):
        with pytest.raises(ProtocolError):
            parse_sync_response(body, http_status=200, expected_count=1, content_type="text/xml")
