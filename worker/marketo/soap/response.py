"""Parse Marketo's ``syncMultipleLeads`` answer: per-lead results or a SOAP fault.

Responses are untrusted input. ``parse_xml`` is the one hardened parser of the project (the
simulator parses requests with it too): no entities, no DTD, no network, no huge trees, and
any DOCTYPE is refused, as SOAP 1.1 forbids one anyway.
"""

from __future__ import annotations

import re
from typing import Final

from lxml import etree

from worker.errors import MarketoError, ProtocolError, ReplyLost, TransportError
from worker.marketo.base import SyncResult, SyncStatus
from worker.marketo.soap.faults import fault_error

MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
#: Marketo's faultstring travels into exception messages; keep it short.
MAX_FAULT_CHARS: Final = 300
#: A per-lead error text is stored with the outcome; bound its size.
MAX_ERROR_CHARS: Final = 2000

_XSI_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_LEADING_CODE = re.compile(r"\s*(\d{3,6})\b")
_HTML_START = re.compile(rb"\s*(<!doctype\s+html|<html)", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    # A fresh parser per document: lxml parsers must not be shared between threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


def parse_xml(body: bytes, *, max_bytes: int = MAX_RESPONSE_BYTES) -> etree._Element:
    """Parse untrusted XML; raise ProtocolError if it is oversized, malformed or has a DOCTYPE."""
    if len(body) > max_bytes:
        raise ProtocolError(f"XML body of {len(body)} bytes exceeds the {max_bytes}-byte cap")
    if not body.strip():
        raise ProtocolError("empty XML body")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        # libxml2 messages name tags and positions, not text content.
        raise ProtocolError(f"malformed XML: {str(exc)[:200]}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ProtocolError(f"unreadable XML ({exc.__class__.__name__})") from None
    docinfo = root.getroottree().docinfo
    doctype = getattr(docinfo, "doctype", "")  # missing from lxml-stubs
    if doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise ProtocolError("XML with a DOCTYPE is refused")
    return root


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _child(parent: etree._Element, name: str) -> etree._Element | None:
    """The first child named ``name`` in any namespace (Marketo's children are unqualified)."""
    return next((child for child in parent if _local(child) == name), None)


def _children(parent: etree._Element, name: str) -> list[etree._Element]:
    return [child for child in parent if _local(child) == name]


def _text(element: etree._Element | None) -> str | None:
    """Stripped text, or None when missing, empty or ``xsi:nil``."""
    if element is None or element.get(_XSI_NIL) in ("true", "1"):
        return None
    text = (element.text or "").strip()
    return text or None


def _body(root: etree._Element) -> etree._Element:
    body = _child(root, "Body") if _local(root) == "Envelope" else None
    if body is None:
        raise ProtocolError(f"not a SOAP envelope (root element {_local(root)[:40]!r})")
    return body


def parse_fault(root: etree._Element) -> MarketoError | None:
    """The error for a SOAP fault in the envelope ``root``, or None when there is no fault.

    The code comes from ``detail//serviceException/code``, else from the leading digits of
    ``faultstring`` (Marketo writes ``"20014 - Authentication failed"``), else None.
    """
    fault = _child(_body(root), "Fault")
    if fault is None:
        return None
    faultstring = _text(_child(fault, "faultstring"))
    if faultstring is None:  # SOAP 1.2 shape, in case a proxy answers with one
        reason = _child(fault, "Reason")
        faultstring = _text(_child(reason, "Text")) if reason is not None else None

    code: int | None = None
    for element in fault.iter("{*}code"):
        parent = element.getparent()
        text = _text(element)
        if (
            parent is not None
            and _local(parent) == "serviceException"
            and text
            and text.isascii()
            and text.isdigit()
        ):
            code = int(text)
            break
    if code is None and faultstring is not None:
        match = _LEADING_CODE.match(faultstring)
        code = int(match.group(1)) if match else None

    message = (faultstring or "SOAP fault without a faultstring")[:MAX_FAULT_CHARS]
    fields: frozenset[str] = frozenset()
    names: tuple[str, ...] = ()
    named_text = ""
    if code == UNKNOWN_FIELD_CODE:
        texts = [
            _text(element) or ""
            for element in fault.iter("{*}message")
            if (parent := element.getparent()) is not None and _local(parent) == "serviceException"
        ]
        # The detail's message, else the faultstring: either may carry the list.
        for text in [*texts, faultstring or ""]:
            named_text = unknown_fields_text(text)[:MAX_NAMED_CHARS]
            names = split_field_names(named_text)
            if names:
                fields = frozenset(n.casefold() for n in names)
                break
        if fields:
            # Field names are schema, not lead data: they may show in outcomes and logs.
            message = f"{message}: unknown fields {', '.join(names)}"[:MAX_FAULT_CHARS]
    return fault_error(code, message, fields=fields, named_text=named_text)


#: Marketo's "Lead Attribute Bad": its message names the unknown fields.
UNKNOWN_FIELD_CODE = 20105

_UNKNOWN_FIELDS = re.compile(
    r"unknown\s+(?:lead\s+)?fields?\s+for\s+import\s*:\s*(?P<names>.+?)\s*(?:\(\s*\d+\s*\))?[\s.]*$",
    re.IGNORECASE | re.DOTALL,
)
#: Quotes and brackets Marketo (or a proxy) may put around a name.
_NAME_QUOTES = "\"'`\u2018\u2019\u201c\u201d[]<>"
#: The part of a 20105 text that names the fields, as kept for matching by name.
MAX_NAMED_CHARS = 4000


def unknown_field_names(message: str) -> tuple[str, ...]:
    """The field names of a 20105 message, as written, without quotes; empty when none can
    be read. Marketo writes ``... unknown fields for import: pants, shirt (20105)``.

    >>> unknown_field_names("syncLead operation failed: unknown fields for import: pants (20105)")
    ('pants',)
    >>> unknown_field_names("Unknown Fields For Import: 'Pants', \"Shirt\"")
    ('Pants', 'Shirt')
    """
    return split_field_names(unknown_fields_text(message))


def unknown_fields_text(message: str) -> str:
    """The part of a 20105 message that lists the fields ('' when it has none)."""
    match = _UNKNOWN_FIELDS.search(message)
    return match.group("names") if match else ""


def split_field_names(listed: str) -> tuple[str, ...]:
    """A comma-separated list of names, without quotes or brackets."""
    names = (n.strip().strip(_NAME_QUOTES).strip() for n in listed.split(","))
    return tuple(n for n in names if n)


def _looks_like_xml(body: bytes, content_type: str | None) -> bool:
    if content_type is not None and "html" in content_type.lower():
        return False
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<") and not _HTML_START.match(head)


def _lead_id(text: str | None) -> int | None:
    # leadId is meaningless on FAILED rows (often 0); never report a non-positive id.
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value > 0 else None


def _sync_result(element: etree._Element) -> SyncResult:
    status_text = _text(_child(element, "status"))
    try:
        status = SyncStatus(status_text or "")
    except ValueError:
        raise ProtocolError(f"unknown syncStatus status {(status_text or '')[:40]!r}") from None
    error: str | None = None
    if status is SyncStatus.FAILED:
        error = (_text(_child(element, "error")) or "Marketo gave no reason")[:MAX_ERROR_CHARS]
    lead_id = _lead_id(_text(_child(element, "leadId")))
    return SyncResult(lead_id=lead_id, status=status, error=error)


def _status_elements(body: etree._Element) -> list[etree._Element]:
    success = _child(body, "successSyncMultipleLeads")
    result = _child(success, "result") if success is not None else None
    status_list = _child(result, "syncStatusList") if result is not None else None
    if status_list is None:
        raise ProtocolError("response has no successSyncMultipleLeads/result/syncStatusList")
    return _children(status_list, "syncStatus")


def parse_sync_response(
    body: bytes,
    *,
    http_status: int,
    expected_count: int,
    content_type: str | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
    request_written: bool = True,
) -> list[SyncResult]:
    """One SyncResult per request lead, by position; raise the MarketoError that fits otherwise.

    - a SOAP fault (whatever the HTTP status) -> ``fault_error(code, faultstring)``
    - a non-XML body (a gateway's HTML 504 page) or a non-2xx answer without a fault ->
      ReplyLost (Marketo may have applied the call), or TransportError when the answer
      came before the request body was written
    - malformed, oversized or hostile XML, or a result count unlike ``expected_count``
      -> ProtocolError (results are matched by position, so a mismatch is never guessed at)
    """
    ok = 200 <= http_status < 300
    if len(body) > max_bytes:
        raise ProtocolError(f"body of {len(body)} bytes exceeds the {max_bytes}-byte cap")
    if not ok and not _looks_like_xml(body, content_type):
        kind = (content_type or "no content type")[:60]
        raise _gateway_error(f"HTTP {http_status} with a non-XML body ({kind})", request_written)
    root = parse_xml(body, max_bytes=max_bytes)
    fault = parse_fault(root)
    if fault is not None:
        raise fault
    if not ok:
        raise _gateway_error(f"HTTP {http_status} without a SOAP fault", request_written)
    results = [_sync_result(element) for element in _status_elements(_body(root))]
    if len(results) != expected_count:
        raise ProtocolError(f"{len(results)} sync results for {expected_count} leads")
    return results


def _gateway_error(message: str, request_written: bool) -> MarketoError:
    """A non-2xx page instead of Marketo's answer: after the request was written, a
    gateway may have given up while Marketo goes on applying the call."""
    return ReplyLost(message) if request_written else TransportError(message)
