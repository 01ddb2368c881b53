"""Build the SOAP 1.1 request for Marketo ``syncMultipleLeads``.

The shape follows Marketo's own sample and the 2_2 WSDL: prefixes ``SOAP-ENV`` and ``ns1``;
only the global elements (``AuthenticationHeader``, ``paramsSyncMultipleLeads``) are
namespace-qualified, because the schema has no ``elementFormDefault``; children are emitted
in the schema's sequence order. Element names are case-sensitive (Marketo silently ignores a
lowercase ``id`` and creates a duplicate lead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from lxml import etree

from producers.contract import FOREIGN_SYS_TYPES, LeadUpsert, check_xml_text
from worker.core.fields import soap_name
from worker.errors import ConfigError, InvalidLead
from worker.marketo.soap.signing import AuthHeader

SOAP_ENV_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
MKTOWS_NS: Final = "http://www.marketo.com/mktows/"
SOAP_ACTION: Final = "http://www.marketo.com/mktows/syncMultipleLeads"

#: HTTP headers of every request. SOAP 1.1 (section 6.1.1) sends SOAPAction as a quoted string.
REQUEST_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_ACTION}"'}
)

# Double quotes, as in Marketo's sample; lxml would write single quotes.
_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_NSMAP: Final = {"SOAP-ENV": SOAP_ENV_NS, "ns1": MKTOWS_NS}


def check_lead(lead: LeadUpsert) -> None:
    """Raise InvalidLead (naming the field) if ``lead`` cannot be serialized.

    Leads were validated when enqueued, possibly by another release; checking again here
    turns what would be an lxml ValueError for the whole batch into a field-level error.
    Callers can run it per lead before batching to keep one bad lead out of a batch.
    """
    if lead.email is None and lead.marketo_id is None and lead.foreign_sys_person_id is None:
        raise InvalidLead("lead", "needs a key: email, marketo_id or foreign_sys_person_id")
    if lead.marketo_id is not None and (
        isinstance(lead.marketo_id, bool) or not isinstance(lead.marketo_id, int)
    ):
        raise InvalidLead("marketo_id", "must be an integer")
    if lead.email is not None:
        check_xml_text("email", lead.email)
    if lead.foreign_sys_person_id is not None:
        check_xml_text("foreign_sys_person_id", lead.foreign_sys_person_id)
        if lead.foreign_sys_type not in FOREIGN_SYS_TYPES:
            raise InvalidLead("foreign_sys_type", f"must be one of {', '.join(FOREIGN_SYS_TYPES)}")
    for name, value in lead.attributes.items():
        check_xml_text("attributes", name)
        if not isinstance(value, str):
            raise InvalidLead(f"attributes.{name}", "must be a string")
        check_xml_text(f"attributes.{name}", value)


def _check_auth(auth: AuthHeader) -> None:
    for name, value in (("mktowsUserId", auth.user_id), ("requestTimestamp", auth.timestamp)):
        try:
            check_xml_text(name, value)
        except InvalidLead as exc:
            raise ConfigError(f"{name} cannot travel in XML: {exc.reason}") from None


def _text_child(parent: etree._Element, tag: str, text: str) -> None:
    etree.SubElement(parent, tag).text = text


def _append_lead(records: etree._Element, lead: LeadUpsert) -> None:
    record = etree.SubElement(records, "leadRecord")
    if lead.marketo_id is not None:
        _text_child(record, "Id", str(lead.marketo_id))
    if lead.email is not None:
        _text_child(record, "Email", lead.email)
    if lead.foreign_sys_person_id is not None:
        _text_child(record, "ForeignSysPersonId", lead.foreign_sys_person_id)
        _text_child(record, "ForeignSysType", str(lead.foreign_sys_type))
    if lead.attributes:
        attribute_list = etree.SubElement(record, "leadAttributeList")
        for name, value in lead.attributes.items():
            attribute = etree.SubElement(attribute_list, "attribute")
            _text_child(attribute, "attrName", soap_name(name))
            _text_child(attribute, "attrValue", value)


def build_sync_multiple_leads(
    leads: Sequence[LeadUpsert], *, auth: AuthHeader, dedup: bool = True
) -> bytes:
    """The UTF-8 request body for one batch, leads in the given order (results come back so).

    ``dedupEnabled`` is always sent: its server default is undocumented and ``false``
    creates duplicate leads. Raises ValueError for an empty batch and InvalidLead for a lead
    that cannot be serialized.
    """
    if not leads:
        raise ValueError("syncMultipleLeads needs at least one lead")
    for lead in leads:
        check_lead(lead)
    _check_auth(auth)

    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=_NSMAP)
    header = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    authentication = etree.SubElement(header, f"{{{MKTOWS_NS}}}AuthenticationHeader")
    _text_child(authentication, "mktowsUserId", auth.user_id)
    _text_child(authentication, "requestSignature", auth.signature)
    _text_child(authentication, "requestTimestamp", auth.timestamp)

    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    params = etree.SubElement(body, f"{{{MKTOWS_NS}}}paramsSyncMultipleLeads")
    records = etree.SubElement(params, "leadRecordList")
    for lead in leads:
        _append_lead(records, lead)
    _text_child(params, "dedupEnabled", "true" if dedup else "false")

    return _XML_DECLARATION + etree.tostring(envelope, encoding="UTF-8", xml_declaration=False)
