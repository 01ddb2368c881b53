"""Parsing Marketo's answers: per-lead results, faults, gateways and hostile XML."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.wsdl_schema import MKTOWS_NS, assert_valid_element
from worker.errors import (
    AuthError,
    BadRequestError,
    MarketoError,
    OutcomeUnknown,
    ProtocolError,
    ReplyLost,
    TransientError,
    TransportError,
)
from worker.marketo.base import SyncResult, SyncStatus
from worker.marketo.soap.faults import FAULT_CODES
from worker.marketo.soap.response import (
    parse_fault,
    parse_sync_response,
    parse_xml,
)

GOLDEN = Path(__file__).parents[1] / "golden"
ENVELOPE_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xmlns:ns1="http://www.marketo.com/mktows/"><SOAP-ENV:Body>'
)
ENVELOPE_CLOSE = "</SOAP-ENV:Body></SOAP-ENV:Envelope>"


def envelope(inner: str) -> bytes:
    return (ENVELOPE_OPEN + inner + ENVELOPE_CLOSE).encode("utf-8")


def success(*rows: tuple[str, str, str | None]) -> bytes:
    statuses = "".join(
        f"<syncStatus><leadId>{lead_id}</leadId><status>{status}</status>"
        + ('<error xsi:nil="true" />' if error is None else f"<error>{error}</error>")
        + "</syncStatus>"
        for lead_id, status, error in rows
    )
    return envelope(
        "<ns1:successSyncMultipleLeads><result><syncStatusList>"
        f"{statuses}</syncStatusList></result></ns1:successSyncMultipleLeads>"
    )


def fault(faultstring: str, code: str | None = None, detail_message: str = "") -> bytes:
    detail = (
        ""
        if code is None
        else '<detail><ns1:serviceException xmlns:ns1="http://www.marketo.com/mktows/">'
        f"<name>mktServiceException</name><message>{detail_message}</message><code>{code}</code>"
        "</ns1:serviceException></detail>"
    )
    return envelope(
        f"<SOAP-ENV:Fault><faultcode>SOAP-ENV:Client</faultcode>"
        f"<faultstring>{faultstring}</faultstring>{detail}</SOAP-ENV:Fault>"
    )


# --- results ---------------------------------------------------------------------------


def test_the_seed_response_gives_one_result_per_lead_in_order() -> None:
    body = (GOLDEN / "seed_response.xml").read_bytes()
    results = parse_sync_response(body, http_status=200, expected_count=2)
    assert results == [
        SyncResult(lead_id=1090240, status=SyncStatus.UPDATED, error=None),
        SyncResult(lead_id=1090239, status=SyncStatus.UPDATED, error=None),
    ]


def test_success_bodies_used_in_these_tests_are_valid_against_the_wsdl_schema() -> None:
    for body in ((GOLDEN / "seed_response.xml").read_bytes(), success(("7", "FAILED", "x"))):
        root = parse_xml(body)
        element = root.find(f".//{{{MKTOWS_NS}}}successSyncMultipleLeads")
        assert element is not None
        assert_valid_element(element)


def test_a_failed_record_carries_marketo_error_text_and_the_others_still_succeed() -> None:
    body = success(
        ("11", "CREATED", None),
        ("0", "FAILED", "Unknown name attribute list: nameasdf"),
        ("12", "UPDATED", None),
    )
    results = parse_sync_response(body, http_status=200, expected_count=3)
    assert [r.status for r in results] == [
        SyncStatus.CREATED,
        SyncStatus.FAILED,
        SyncStatus.UPDATED,
    ]
    assert results[1] == SyncResult(
        lead_id=None, status=SyncStatus.FAILED, error="Unknown name attribute list: nameasdf"
    )
    assert results[0].error is None
    assert results[2].lead_id == 12


def test_a_failed_record_without_a_reason_still_gets_an_error_text() -> None:
    (result,) = parse_sync_response(
        success(("5", "FAILED", None)), http_status=200, expected_count=1
    )
    assert result.status is SyncStatus.FAILED
    assert result.error


@pytest.mark.parametrize(("returned", "expected"), [(1, 2), (3, 2), (0, 1)])
def test_a_result_count_unlike_the_request_is_a_protocol_error(
    returned: int, expected: int
) -> None:
    body = success(*[(str(i + 1), "UPDATED", None) for i in range(returned)])
    with pytest.raises(ProtocolError, match=f"{returned} sync results for {expected} leads"):
        parse_sync_response(body, http_status=200, expected_count=expected)


def test_an_unknown_status_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="DELETED"):
        parse_sync_response(success(("1", "DELETED", None)), http_status=200, expected_count=1)


def test_a_success_body_without_a_status_list_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="syncStatusList"):
        parse_sync_response(envelope("<ns1:somethingElse/>"), http_status=200, expected_count=1)


def test_xml_that_is_not_a_soap_envelope_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not a SOAP envelope"):
        parse_sync_response(b"<result/>", http_status=200, expected_count=1)


# --- faults ----------------------------------------------------------------------------


def test_the_adobe_fault_sample_is_an_auth_error_with_its_code() -> None:
    body = (GOLDEN / "fault_20014.xml").read_bytes()
    with pytest.raises(AuthError) as caught:
        parse_sync_response(body, http_status=500, expected_count=2)
    assert caught.value.code == 20014
    assert "Authentication failed" in str(caught.value)


@pytest.mark.parametrize(("code", "error_type"), sorted(FAULT_CODES.items()))
def test_every_known_fault_code_maps_to_its_error_class(
    code: int, error_type: type[MarketoError]
) -> None:
    body = fault(f"{code} - Something happened", str(code), f"Something happened ({code})")
    with pytest.raises(MarketoError) as caught:
        parse_sync_response(body, http_status=500, expected_count=1)
    assert type(caught.value) is error_type
    assert caught.value.code == code


def test_the_detail_code_wins_over_the_faultstring_digits() -> None:
    error = parse_fault(parse_xml(fault("20011 - Internal Error", "20016")))
    assert isinstance(error, MarketoError)
    assert error.code == 20016


def test_a_fault_without_detail_falls_back_to_the_faultstring_code() -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_sync_response(fault("20105 - Unknown lead field"), http_status=500, expected_count=1)
    assert caught.value.code == 20105


def test_a_fault_without_any_code_is_transient_and_codeless() -> None:
    with pytest.raises(TransientError) as caught:
        parse_sync_response(fault("Server busy"), http_status=500, expected_count=1)
    assert type(caught.value) is TransientError
    assert caught.value.code is None


def test_an_unknown_fault_code_is_transient_with_its_code() -> None:
    with pytest.raises(TransientError) as caught:
        parse_sync_response(fault("29999 - New thing", "29999"), http_status=500, expected_count=1)
    assert caught.value.code == 29999


@pytest.mark.parametrize("http_status", [200, 500, 503])
def test_a_fault_is_a_fault_whatever_the_http_status(http_status: int) -> None:
    with pytest.raises(AuthError):
        parse_sync_response(
            fault("20014 - Authentication failed", "20014"),
            http_status=http_status,
            expected_count=1,
            content_type="text/xml;charset=UTF-8",
        )


def test_a_long_faultstring_is_truncated_in_the_error() -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_sync_response(
            fault("20110 - " + "x" * 5000, "20110"), http_status=500, expected_count=1
        )
    assert len(str(caught.value)) < 400


def test_parse_fault_returns_none_for_a_success_envelope() -> None:
    assert parse_fault(parse_xml(success(("1", "CREATED", None)))) is None


# --- transport-level answers ------------------------------------------------------------

GATEWAY_PAGE = b"""<!DOCTYPE html>
<html><head><title>502 Bad Gateway</title></head>
<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"""


@pytest.mark.parametrize("content_type", ["text/html", None, "text/xml"])
def test_a_gateway_page_after_the_request_was_written_is_an_unknown_outcome(
    content_type: str | None,
) -> None:
    """A gateway's 5xx page after the request left: Marketo may still apply the call."""
    with pytest.raises(ReplyLost, match="502"):
        parse_sync_response(
            GATEWAY_PAGE, http_status=502, expected_count=1, content_type=content_type
        )
    assert issubclass(ReplyLost, OutcomeUnknown)


@pytest.mark.parametrize("body", [b"", b"Service Unavailable", b"upstream connect error"])
def test_a_5xx_before_the_request_was_written_is_not_received(body: bytes) -> None:
    with pytest.raises(TransportError, match="503") as caught:
        parse_sync_response(body, http_status=503, expected_count=1, request_written=False)
    assert not isinstance(caught.value, OutcomeUnknown)
    with pytest.raises(ReplyLost, match="503"):
        parse_sync_response(body, http_status=503, expected_count=1)


def test_a_non_2xx_soap_body_without_a_fault_is_an_unknown_outcome() -> None:
    with pytest.raises(ReplyLost, match="HTTP 500 without a SOAP fault"):
        parse_sync_response(success(("1", "CREATED", None)), http_status=500, expected_count=1)


def test_an_html_page_with_http_200_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_sync_response(GATEWAY_PAGE, http_status=200, expected_count=1)


# --- hostile and broken XML ---------------------------------------------------------------


def test_truncated_xml_is_a_protocol_error() -> None:
    body = (GOLDEN / "seed_response.xml").read_bytes()
    for cut in (len(body) // 3, len(body) - 30):
        with pytest.raises(ProtocolError, match="malformed XML"):
            parse_sync_response(body[:cut], http_status=200, expected_count=2)


def test_an_empty_200_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        parse_sync_response(b"", http_status=200, expected_count=1)


def test_an_external_entity_never_reads_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    body = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file://{secret}">]>'
        + ENVELOPE_OPEN.split("\n", 1)[1]
        + "<ns1:successSyncMultipleLeads><result><syncStatusList><syncStatus>"
        "<leadId>1</leadId><status>FAILED</status><error>&xxe;</error>"
        "</syncStatus></syncStatusList></result></ns1:successSyncMultipleLeads>" + ENVELOPE_CLOSE
    ).encode()
    with pytest.raises(ProtocolError) as caught:
        parse_sync_response(body, http_status=200, expected_count=1)
    assert "TOP-SECRET-MARKER" not in str(caught.value)
    with pytest.raises(ProtocolError, match="DOCTYPE"):
        parse_xml(body)


def test_an_external_dtd_is_refused_without_loading_it(tmp_path: Path) -> None:
    dtd = tmp_path / "evil.dtd"
    dtd.write_text('<!ENTITY leak "LOADED-DTD-MARKER">')
    body = f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "file://{dtd}"><r>&leak;</r>'.encode()
    with pytest.raises(ProtocolError) as caught:
        parse_xml(body)
    assert "LOADED-DTD-MARKER" not in str(caught.value)


def test_a_harmless_looking_doctype_is_still_refused() -> None:
    with pytest.raises(ProtocolError, match="DOCTYPE"):
        parse_xml(b"<!DOCTYPE Envelope><Envelope/>")


def test_billion_laughs_is_a_protocol_error() -> None:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    )
    body = f'<?xml version="1.0"?><!DOCTYPE lolz [{entities}]><lolz>&lol9;</lolz>'.encode()
    with pytest.raises(ProtocolError):
        parse_sync_response(body, http_status=200, expected_count=1)


def test_an_oversized_body_is_refused_before_parsing() -> None:
    body = success(("1", "CREATED", None))
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_sync_response(body, http_status=200, expected_count=1, max_bytes=len(body) - 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_xml(b"<a>" + b"x" * 2048 + b"</a>", max_bytes=1024)


def test_absurdly_deep_nesting_is_a_protocol_error() -> None:
    body = b"<a>" * 5000 + b"</a>" * 5000
    with pytest.raises(ProtocolError):
        parse_xml(body)


def test_processing_instructions_are_dropped() -> None:
    root = parse_xml(b'<r><?php system("x"); ?><c>1</c></r>')
    assert [child.tag for child in root] == ["c"]
