"""Marketo SOAP ``describeMObject`` for ``LeadRecord``: the lead fields of the instance.

As the 2_2 WSDL has it: ``ns1:paramsDescribeMObject`` (ParamsDescribeMObject: one
unqualified ``objectName``) under a signed ``ns1:AuthenticationHeader``, answered by
``ns1:successDescribeMObject/result/metadata`` (MObjectMetadata) whose ``fieldList`` holds a
``field`` (MObjFieldMetadata) per field, its ``name`` the field's SOAP name. Pure codecs
and one small async call on the wire seam; a fault raises the same error tree as
syncMultipleLeads (``soap/faults.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Final

from lxml import etree
from pydantic import SecretStr

from producers.contract import check_xml_text
from worker.errors import ConfigError, InvalidLead, ProtocolError, ReplyLost, TransportError
from worker.marketo.soap.envelope import MKTOWS_NS, SOAP_ENV_NS
from worker.marketo.soap.response import MAX_RESPONSE_BYTES, parse_fault, parse_xml
from worker.marketo.soap.signing import AuthHeader, make_auth_header
from worker.transport import Transport

DESCRIBE_ACTION: Final = "http://www.marketo.com/mktows/describeMObject"
#: The MObject whose fields are a lead's (objectName: ActivityRecord, LeadRecord,
#: Opportunity or OpportunityPersonRole).
LEAD_OBJECT: Final = "LeadRecord"
REQUEST_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{DESCRIBE_ACTION}"'}
)
_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_NSMAP: Final = {"SOAP-ENV": SOAP_ENV_NS, "ns1": MKTOWS_NS}
_XSI_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def build_describe_mobject(*, auth: AuthHeader, object_name: str = LEAD_OBJECT) -> bytes:
    """The UTF-8 request body: the signed header and ``paramsDescribeMObject``."""
    for name, value in (("mktowsUserId", auth.user_id), ("requestTimestamp", auth.timestamp)):
        try:
            check_xml_text(name, value)
        except InvalidLead as exc:
            raise ConfigError(f"{name} cannot travel in XML: {exc.reason}") from None
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=_NSMAP)
    header = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    authentication = etree.SubElement(header, f"{{{MKTOWS_NS}}}AuthenticationHeader")
    for tag, value in (
        ("mktowsUserId", auth.user_id),
        ("requestSignature", auth.signature),
        ("requestTimestamp", auth.timestamp),
    ):
        etree.SubElement(authentication, tag).text = value
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    params = etree.SubElement(body, f"{{{MKTOWS_NS}}}paramsDescribeMObject")
    etree.SubElement(params, "objectName").text = object_name
    return _XML_DECLARATION + etree.tostring(envelope, encoding="UTF-8", xml_declaration=False)


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _child(parent: etree._Element | None, name: str) -> etree._Element | None:
    if parent is None:
        return None
    return next((child for child in parent if _local(child) == name), None)


def _text(element: etree._Element | None) -> str | None:
    if element is None or element.get(_XSI_NIL) in ("true", "1"):
        return None
    return (element.text or "").strip() or None


def parse_describe_response(
    body: bytes,
    *,
    http_status: int,
    max_bytes: int = MAX_RESPONSE_BYTES,
    request_written: bool = True,
    object_name: str = LEAD_OBJECT,
) -> tuple[str, ...]:
    """The field names of ``successDescribeMObject`` in document order (as Marketo spells
    them), or the MarketoError that fits: a SOAP fault raises its branch of the error tree;
    a non-2xx page without one is ReplyLost (TransportError before the request left); an
    unreadable answer, one for another object, or one without fields is a ProtocolError."""
    ok = 200 <= http_status < 300
    try:
        root = parse_xml(body, max_bytes=max_bytes)
    except ProtocolError:
        if ok:
            raise
        root = None
    fault = parse_fault(root) if root is not None and _local(root) == "Envelope" else None
    if fault is not None:
        raise fault
    if not ok:
        message = f"HTTP {http_status} from describeMObject without a SOAP fault"
        raise ReplyLost(message) if request_written else TransportError(message)
    assert root is not None
    success = _child(_child(root, "Body"), "successDescribeMObject")
    metadata = _child(_child(success, "result"), "metadata")
    if metadata is None:
        raise ProtocolError("response has no successDescribeMObject/result/metadata")
    described = _text(_child(metadata, "name"))
    if described is not None and described != object_name:
        raise ProtocolError(f"describeMObject answered for {described[:40]!r}, not {object_name}")
    field_list = _child(metadata, "fieldList")
    names = [
        name
        for field in (field_list if field_list is not None else [])
        if _local(field) == "field" and (name := _text(_child(field, "name"))) is not None
    ]
    if not names:
        raise ProtocolError(f"describeMObject listed no fields of {object_name}")
    return tuple(names)


async def describe_lead_fields(
    transport: Transport,
    *,
    endpoint: str,
    user_id: str,
    encryption_key: SecretStr,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
    now: Callable[[], datetime | None] = lambda: None,
) -> tuple[str, ...]:
    """One signed describeMObject(LeadRecord): the SOAP names of the lead fields."""
    if not user_id or not encryption_key.get_secret_value():
        raise ConfigError("LEADSYNC_MARKETO_USER_ID and LEADSYNC_MARKETO_ENCRYPTION_KEY are needed")
    auth = make_auth_header(user_id, encryption_key.get_secret_value(), now())
    reply = await transport.post(endpoint, build_describe_mobject(auth=auth), REQUEST_HEADERS)
    return parse_describe_response(
        reply.body,
        http_status=reply.status,
        max_bytes=max_response_bytes,
        request_written=reply.request_written,
    )
