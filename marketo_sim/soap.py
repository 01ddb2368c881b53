"""The simulator's own reading of a syncMultipleLeads or describeMObject request, and its
responses.

The parser does not reuse the client codec's semantics: it checks the envelope against the
2_2 WSDL on its own (SOAP 1.1 namespace, ``ns1:AuthenticationHeader``,
``ns1:paramsSyncMultipleLeads`` or ``ns1:paramsDescribeMObject``, unqualified children in
schema order, xs:int / xs:boolean / enum values) so that a client mistake shows up as the
fault Marketo would send. The operation is the Body's element.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal
from xml.sax.saxutils import escape

from lxml import etree

from worker.errors import ProtocolError
from worker.marketo.soap.response import parse_xml

SOAP_ENV_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
MKTOWS_NS: Final = "http://www.marketo.com/mktows/"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
FOREIGN_SYS_TYPES: Final = frozenset({"CUSTOM", "SFDC", "NETSUITE"})
CONTENT_TYPE: Final = "text/xml;charset=UTF-8"

#: The short text of each fault code, as in Marketo's faultstring ``"<code> - <short>"``.
FAULT_TEXT: Final[dict[int, str]] = {
    10001: "Internal Error",
    20011: "Internal Error",
    20012: "Request Not Understood",
    20013: "Access Denied",
    20014: "Authentication failed",
    20015: "Request Limit Exceeded",
    20016: "Request Expired",
    20017: "Invalid Request",
    20019: "Unsupported Operation",
    20110: "Bad Parameter",
    20023: "Rate Limit Exceeded",
    20024: "Concurrency Limit Exceeded",
    20101: "Lead Key Required",
    20105: "Unknown lead field",
}

UnknownElements = Literal["fault", "ignore"]
SyncStatusValue = Literal["CREATED", "UPDATED", "FAILED"]


class SimFault(Exception):
    """A whole-call SOAP fault; ``message`` is the long text (never carries lead values)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.short = FAULT_TEXT.get(code, "Error")
        self.message = message or self.short
        super().__init__(f"{code}: {self.message}")


@dataclass(frozen=True, slots=True)
class ParsedAuth:
    user_id: str
    signature: str
    timestamp: str


@dataclass(frozen=True, slots=True)
class ParsedAttribute:
    name: str
    value: str
    type: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    lead_id: int | None = None
    email: str | None = None
    foreign_sys_person_id: str | None = None
    foreign_sys_type: str | None = None
    attributes: tuple[ParsedAttribute, ...] = ()

    @property
    def key(self) -> str | None:
        """The lead key as leadsync's contract spells it: Id > ForeignSysPersonId > Email."""
        if self.lead_id is not None:
            return f"id:{self.lead_id}"
        if self.foreign_sys_person_id is not None:
            return f"fsp:{self.foreign_sys_type}:{self.foreign_sys_person_id}"
        if self.email is not None:
            return f"email:{self.email.strip().lower()}"
        return None


@dataclass(frozen=True, slots=True)
class SyncRequest:
    auth: ParsedAuth
    records: tuple[ParsedRecord, ...]
    dedup: bool | None  # None: the element was absent or nil


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """describeMObject: the MObject whose metadata is asked for."""

    auth: ParsedAuth
    object_name: str


@dataclass(frozen=True, slots=True)
class FieldMetadata:
    """One ``field`` (MObjFieldMetadata) of a describeMObject answer."""

    name: str
    display_name: str | None
    data_type: str
    size: int | None
    is_readonly: bool = False
    is_primary_key: bool = False
    is_custom: bool = False


@dataclass(frozen=True, slots=True)
class SyncStatus:
    lead_id: int
    status: SyncStatusValue
    error: str | None = None


# --- parsing ---------------------------------------------------------------------------


def parse_document(body: bytes, *, max_bytes: int = 64 * 1024 * 1024) -> etree._Element:
    """Parse an untrusted XML body with the project's hardened parser (no DTDs, entities or
    network); anything but plain, well-formed XML is SimFault(20012)."""
    try:
        return parse_xml(body, max_bytes=max_bytes)
    except ProtocolError:
        raise SimFault(
            20012, "Unexpected SOAP message: not well-formed XML, or a DOCTYPE"
        ) from None


@dataclass(frozen=True, slots=True)
class _Child:
    name: str
    required: bool = False
    repeated: bool = False
    nillable: bool = False


_AUTH_SPEC: Final = (
    _Child("mktowsUserId", required=True),
    _Child("requestSignature", required=True),
    _Child("requestTimestamp", required=True),
    _Child("audit"),
    _Child("mode"),
)
_PARAMS_SPEC: Final = (
    _Child("leadRecordList", required=True),
    _Child("dedupEnabled", nillable=True),
)
_DESCRIBE_SPEC: Final = (_Child("objectName", required=True),)
_LIST_SPEC: Final = (_Child("leadRecord", repeated=True),)
_RECORD_SPEC: Final = (
    _Child("Id", nillable=True),
    _Child("Email", nillable=True),
    _Child("ForeignSysPersonId", nillable=True),
    _Child("ForeignSysType", nillable=True),
    _Child("leadAttributeList", nillable=True),
)
_ATTRIBUTES_SPEC: Final = (_Child("attribute", repeated=True),)
_ATTRIBUTE_SPEC: Final = (
    _Child("attrName", required=True),
    _Child("attrType", nillable=True),
    _Child("attrValue", required=True),
)

_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _is_nil(element: etree._Element) -> bool:
    return element.get(f"{{{XSI_NS}}}nil", "false").strip() in ("true", "1")


def _elements(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def _children(
    parent: etree._Element, spec: Sequence[_Child], mode: UnknownElements
) -> dict[str, list[etree._Element]]:
    """Match ``parent``'s children against an xs:sequence of unqualified elements."""
    where = _local(parent)
    if (parent.text or "").strip() or any((c.tail or "").strip() for c in parent):
        raise SimFault(20012, f"Unexpected text inside {where}")
    index = {child.name: position for position, child in enumerate(spec)}
    found: dict[str, list[etree._Element]] = {child.name: [] for child in spec}
    cursor = 0
    for element in _elements(parent):
        qualified = etree.QName(element).namespace is not None
        position = None if qualified else index.get(_local(element))
        if position is None:
            if mode == "ignore":
                continue
            what = "namespace-qualified element" if qualified else "element"
            raise SimFault(20012, f"Unexpected {what} {_local(element)} in {where}")
        child = spec[position]
        if mode == "fault":
            if position < cursor or (found[child.name] and not child.repeated):
                raise SimFault(20012, f"Element {child.name} out of order or repeated in {where}")
            cursor = position
        if _is_nil(element) and not child.nillable:
            raise SimFault(20012, f"Element {child.name} in {where} is not nillable")
        found[child.name].append(element)
    for child in spec:
        if child.required and not found[child.name]:
            raise SimFault(20017, f"Missing expected parameter {child.name} in {where}")
    return found


def _text(element: etree._Element) -> str:
    if _elements(element):
        raise SimFault(20012, f"Element {_local(element)} must hold text only")
    return "".join(str(part) for part in element.itertext())


def _optional_text(found: dict[str, list[etree._Element]], name: str) -> str | None:
    elements = found[name]
    if not elements or _is_nil(elements[0]):
        return None
    return _text(elements[0])


def _parse_int(name: str, text: str) -> int:
    value = text.strip()
    if not _INT_RE.fullmatch(value) or not _INT_MIN <= int(value) <= _INT_MAX:
        raise SimFault(20012, f"{name} is not an xs:int")
    return int(value)


def _parse_bool(name: str, text: str, *, lenient: bool) -> bool:
    value = text.strip()
    # Ruby's sample sends "True"; Marketo accepted it, so case is forgiven unless strict.
    if lenient:
        value = value.lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise SimFault(20012, f"{name} is not an xs:boolean")


def _parse_auth(header: etree._Element | None, mode: UnknownElements) -> ParsedAuth:
    blocks = [] if header is None else _elements(header)
    auth = [
        b
        for b in blocks
        if etree.QName(b).namespace == MKTOWS_NS and _local(b) == "AuthenticationHeader"
    ]
    if not auth:
        raise SimFault(20017, "Missing expected parameter AuthenticationHeader")
    found = _children(auth[0], _AUTH_SPEC, mode)
    if found["mode"]:
        _parse_int("mode", _text(found["mode"][0]))
    return ParsedAuth(
        user_id=_text(found["mktowsUserId"][0]),
        signature=_text(found["requestSignature"][0]),
        timestamp=_text(found["requestTimestamp"][0]),
    )


def _parse_record(element: etree._Element, mode: UnknownElements) -> ParsedRecord:
    found = _children(element, _RECORD_SPEC, mode)
    id_text = _optional_text(found, "Id")
    fst = _optional_text(found, "ForeignSysType")
    if fst is not None and fst.strip() not in FOREIGN_SYS_TYPES:
        raise SimFault(20012, "ForeignSysType is not one of CUSTOM, SFDC, NETSUITE")
    attributes: list[ParsedAttribute] = []
    lists = found["leadAttributeList"]
    if lists and not _is_nil(lists[0]):
        for attribute in _children(lists[0], _ATTRIBUTES_SPEC, mode)["attribute"]:
            parts = _children(attribute, _ATTRIBUTE_SPEC, mode)
            attributes.append(
                ParsedAttribute(
                    name=_text(parts["attrName"][0]),
                    value=_text(parts["attrValue"][0]),
                    type=_optional_text(parts, "attrType"),
                )
            )
    return ParsedRecord(
        lead_id=None if id_text is None else _parse_int("Id", id_text),
        email=_optional_text(found, "Email"),
        foreign_sys_person_id=_optional_text(found, "ForeignSysPersonId"),
        foreign_sys_type=None if fst is None else fst.strip(),
        attributes=tuple(attributes),
    )


#: The operations the simulator serves: the Body's element -> the operation's SOAPAction.
OPERATIONS: Final[dict[str, str]] = {
    "paramsSyncMultipleLeads": "http://www.marketo.com/mktows/syncMultipleLeads",
    "paramsDescribeMObject": "http://www.marketo.com/mktows/describeMObject",
}


def _envelope(root: etree._Element) -> tuple[etree._Element | None, etree._Element]:
    """The Header (or None) and the one operation element of the Body."""
    if etree.QName(root).namespace != SOAP_ENV_NS or _local(root) != "Envelope":
        raise SimFault(20012, "Unexpected SOAP message: not a SOAP 1.1 Envelope")
    parts = _elements(root)
    names = [(etree.QName(p).namespace, _local(p)) for p in parts]
    if names not in ([(SOAP_ENV_NS, "Body")], [(SOAP_ENV_NS, "Header"), (SOAP_ENV_NS, "Body")]):
        raise SimFault(
            20012, "Unexpected SOAP message: Envelope must hold an optional Header and a Body"
        )
    header = parts[0] if len(parts) == 2 else None
    operations = _elements(parts[-1])
    if len(operations) != 1:
        raise SimFault(20012, "Unexpected SOAP message: Body must hold exactly one element")
    operation = operations[0]
    if etree.QName(operation).namespace != MKTOWS_NS:
        raise SimFault(20012, "Unexpected SOAP message: operation is not in the mktows namespace")
    if _local(operation) not in OPERATIONS:
        raise SimFault(
            20019,
            "Unsupported Operation: the simulator only serves syncMultipleLeads and describeMObject",
        )
    return header, operation


def parse_operation(
    root: etree._Element, *, unknown_elements: UnknownElements = "fault"
) -> SyncRequest | DescribeRequest:
    """Interpret a parsed envelope as the operation its Body names; SimFault as Marketo."""
    header, operation = _envelope(root)
    if _local(operation) == "paramsDescribeMObject":
        auth = _parse_auth(header, unknown_elements)
        found = _children(operation, _DESCRIBE_SPEC, unknown_elements)
        return DescribeRequest(auth=auth, object_name=_text(found["objectName"][0]).strip())
    return _parse_sync(header, operation, unknown_elements)


def parse_sync_request(
    root: etree._Element, *, unknown_elements: UnknownElements = "fault"
) -> SyncRequest:
    """Interpret a parsed envelope as syncMultipleLeads; raise SimFault as Marketo would."""
    header, operation = _envelope(root)
    if _local(operation) != "paramsSyncMultipleLeads":
        raise SimFault(20019, "Unsupported Operation: not syncMultipleLeads")
    return _parse_sync(header, operation, unknown_elements)


def _parse_sync(
    header: etree._Element | None, operation: etree._Element, mode: UnknownElements
) -> SyncRequest:
    auth = _parse_auth(header, mode)

    params = _children(operation, _PARAMS_SPEC, mode)
    records_list = params["leadRecordList"][0]
    if _is_nil(records_list):
        raise SimFault(20012, "leadRecordList is not nillable")
    records = tuple(
        _parse_record(r, mode) for r in _children(records_list, _LIST_SPEC, mode)["leadRecord"]
    )
    if not records:
        raise SimFault(20017, "Missing expected parameter leadRecord")
    dedup_text = _optional_text(params, "dedupEnabled")
    dedup = None if dedup_text is None else _parse_bool("dedupEnabled", dedup_text, lenient=True)
    return SyncRequest(auth=auth, records=records, dedup=dedup)


def parse_request_bytes(body: bytes, *, unknown_elements: UnknownElements = "fault") -> SyncRequest:
    """Parse and interpret a raw syncMultipleLeads body (the pure entry point tests drive)."""
    return parse_sync_request(parse_document(body), unknown_elements=unknown_elements)


def parse_operation_bytes(
    body: bytes, *, unknown_elements: UnknownElements = "fault"
) -> SyncRequest | DescribeRequest:
    """Parse and interpret a raw request body of either operation (the server's entry)."""
    return parse_operation(parse_document(body), unknown_elements=unknown_elements)


# --- rendering -------------------------------------------------------------------------

_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ENVELOPE_OPEN: Final = f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV_NS}" xmlns:xsi="{XSI_NS}" xmlns:ns1="{MKTOWS_NS}">'


def render_success(statuses: Sequence[SyncStatus]) -> bytes:
    """The documented successSyncMultipleLeads response, one syncStatus per record, in order."""
    rows = []
    for status in statuses:
        error = (
            '<error xsi:nil="true" />'
            if status.error is None
            else f"<error>{escape(status.error)}</error>"
        )
        rows.append(
            f"<syncStatus><leadId>{status.lead_id}</leadId><status>{status.status}</status>{error}</syncStatus>"
        )
    return (
        f"{_DECLARATION}{_ENVELOPE_OPEN}<SOAP-ENV:Body><ns1:successSyncMultipleLeads><result>"
        f"<syncStatusList>{''.join(rows)}</syncStatusList></result></ns1:successSyncMultipleLeads>"
        "</SOAP-ENV:Body></SOAP-ENV:Envelope>\n"
    ).encode()


#: ``updatedAt`` of the described object and of its fields (Marketo's sample shows a fixed
#: date for standard objects).
DESCRIBED_AT: Final = "2010-01-01T00:00:00+00:00"


def _nillable(tag: str, value: str | None) -> str:
    return f'<{tag} xsi:nil="true" />' if value is None else f"<{tag}>{escape(value)}</{tag}>"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def render_describe(
    object_name: str, fields: Sequence[FieldMetadata], *, description: str | None = None
) -> bytes:
    """successDescribeMObject as in Marketo's sample: ``result/metadata`` (MObjectMetadata)
    with a ``fieldList/field`` (MObjFieldMetadata, every child in schema order) per field."""
    rows = [
        "<field>"
        f"<name>{escape(f.name)}</name>"
        f"{_nillable('description', f.display_name)}"
        f"{_nillable('displayName', f.display_name)}"
        "<sourceObject>Lead</sourceObject>"
        f"<dataType>{escape(f.data_type)}</dataType>"
        f"{_nillable('size', None if f.size is None else str(f.size))}"
        f"<isReadonly>{_flag(f.is_readonly)}</isReadonly>"
        f"<isUpdateBlocked>{_flag(f.is_readonly)}</isUpdateBlocked>"
        "<isName>false</isName>"
        f"<isPrimaryKey>{_flag(f.is_primary_key)}</isPrimaryKey>"
        f"<isCustom>{_flag(f.is_custom)}</isCustom>"
        "<isDynamic>false</isDynamic>"
        '<dynamicFieldRef xsi:nil="true" />'
        f"<updatedAt>{DESCRIBED_AT}</updatedAt>"
        "</field>"
        for f in fields
    ]
    return (
        f"{_DECLARATION}{_ENVELOPE_OPEN}<SOAP-ENV:Body><ns1:successDescribeMObject><result>"
        f"<metadata><name>{escape(object_name)}</name>{_nillable('description', description)}"
        "<isCustom>false</isCustom><isVirtual>false</isVirtual>"
        f"<fieldList>{''.join(rows)}</fieldList><updatedAt>{DESCRIBED_AT}</updatedAt></metadata>"
        "</result></ns1:successDescribeMObject></SOAP-ENV:Body></SOAP-ENV:Envelope>\n"
    ).encode()


def render_fault(fault: SimFault) -> bytes:
    """A SOAP 1.1 Client fault in Marketo's shape (sent with HTTP 500)."""
    return (
        f'{_DECLARATION}<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV_NS}" xmlns:ns1="{MKTOWS_NS}">'
        "<SOAP-ENV:Body><SOAP-ENV:Fault><faultcode>SOAP-ENV:Client</faultcode>"
        f"<faultstring>{fault.code} - {escape(fault.short)}</faultstring>"
        "<detail><ns1:serviceException><name>mktServiceException</name>"
        f"<message>{escape(fault.message)} ({fault.code})</message><code>{fault.code}</code>"
        "</ns1:serviceException></detail></SOAP-ENV:Fault></SOAP-ENV:Body></SOAP-ENV:Envelope>\n"
    ).encode()


def render_truncated(statuses: Sequence[SyncStatus]) -> bytes:
    """A success response cut mid-document, as a dropped connection or a proxy would leave it."""
    whole = render_success(statuses)
    return whole[: max(len(_DECLARATION) + 10, len(whole) * 2 // 3)]


def render_doctype_bomb() -> bytes:
    """A hostile response: a DOCTYPE with nested entities (billion laughs) inside the envelope."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE SOAP-ENV:Envelope [{"".join(entities)}]>'
        f"{_ENVELOPE_OPEN}<SOAP-ENV:Body><ns1:successSyncMultipleLeads><result><syncStatusList>"
        "<syncStatus><leadId>1</leadId><status>CREATED</status><error>&lol9;</error></syncStatus>"
        "</syncStatusList></result></ns1:successSyncMultipleLeads></SOAP-ENV:Body></SOAP-ENV:Envelope>\n"
    ).encode()


HTML_502: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
