"""The JSON of Sync Leads (``POST /rest/v1/leads.json``): pure functions, no I/O.

The lead contract is the same as for SOAP; only the wire form differs. Email travels as
``email``, a lead's foreign_sys_person_id as the configured lookup field (the custom field
that replaces ForeignSysPersonId), its Marketo id as ``id`` only with updateOnly (Marketo
takes ``id`` only for updates), and attributes by their REST API names
(:mod:`worker.core.fields`). A lead the configuration cannot send is answered FAILED here,
without spending a call. Results come back in input order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from producers.contract import LeadUpsert
from worker.core.fields import rest_name
from worker.errors import BadRequestError, MarketoError, ProtocolError, ReplyLost, TransportError
from worker.marketo.base import SyncResult, SyncStatus
from worker.marketo.rest.faults import error_for

LEADS_PATH: Final = "/rest/v1/leads.json"
#: Marketo answers a body over 1 MB with HTTP 413; the safe reading of "1 MB" is 10^6 bytes.
MAX_BODY_BYTES: Final = 1_000_000
#: Per-record reasons are stored with the outcome; bound their size.
MAX_REASON_CHARS: Final = 500
REQUEST_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
)
_LOOKUP_ACTIONS: Final = frozenset({"createOrUpdate", "updateOnly"})
_PARTITION_ACTIONS: Final = frozenset({"createOnly", "createOrUpdate"})


@dataclass(frozen=True, slots=True)
class RestOptions:
    """How leads are synced: LEADSYNC_MARKETO_ACTION, _LOOKUP_FIELD and _PARTITION."""

    action: str = "createOrUpdate"
    lookup_field: str = "email"
    partition: str = ""


@dataclass(frozen=True, slots=True)
class Prepared:
    """One request: its body, which leads it carries (by index) and the leads answered
    FAILED without a call."""

    body: bytes
    sent: tuple[int, ...]
    refused: Mapping[int, SyncResult] = field(default_factory=dict)


def lead_record(lead: LeadUpsert, options: RestOptions) -> dict[str, object] | str:
    """The REST input record of ``lead``, or why it cannot be sent as configured."""
    lookup = options.lookup_field
    record: dict[str, object] = {}
    for name, value in lead.attributes.items():
        record[rest_name(name)] = value
    if lead.email is not None:
        record["email"] = lead.email
    if lookup == "id":
        if lead.marketo_id is None:
            return "no marketo_id: LEADSYNC_MARKETO_LOOKUP_FIELD=id updates leads by id"
        record["id"] = lead.marketo_id
    elif lookup == "email":
        if lead.email is None:
            return (
                "no email: REST looks leads up by LEADSYNC_MARKETO_LOOKUP_FIELD=email (a lead "
                "keyed by marketo_id needs updateOnly with lookup field id; one keyed by "
                "foreign_sys_person_id needs the custom field that replaces it)"
            )
    elif lead.foreign_sys_person_id is not None:
        record[lookup] = lead.foreign_sys_person_id
    elif lookup not in record:
        return f"no value for the lookup field {lookup} (LEADSYNC_MARKETO_LOOKUP_FIELD)"
    return record


def build_request(leads: Sequence[LeadUpsert], *, options: RestOptions, dedup: bool) -> Prepared:
    """The request for ``leads``. ``dedup=False`` is createDuplicate, as SOAP's
    dedupEnabled=false. Raises BadRequestError (code 413) when the body would be over
    Marketo's 1 MB, so the drain splits the batch before anything is sent."""
    action = options.action if dedup else "createDuplicate"
    records: list[dict[str, object]] = []
    sent: list[int] = []
    refused: dict[int, SyncResult] = {}
    for index, lead in enumerate(leads):
        record = lead_record(lead, options)
        if isinstance(record, str):
            refused[index] = SyncResult(None, SyncStatus.FAILED, record, "REST_KEY")
            continue
        records.append(record)
        sent.append(index)
    request: dict[str, object] = {"action": action}
    if action in _LOOKUP_ACTIONS:
        request["lookupField"] = options.lookup_field
    if options.partition and action in _PARTITION_ACTIONS:
        request["partitionName"] = options.partition
    request["input"] = records
    body = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_BODY_BYTES and records:
        raise BadRequestError(
            f"request body of {len(body):,} bytes is over Marketo's 1 MB; split", code=413
        )
    return Prepared(body, tuple(sent), refused)


def _reason(reasons: object) -> tuple[str, str | None]:
    """A skipped record's reasons as one text, and the first reason's code."""
    if not isinstance(reasons, list) or not reasons:
        return "skipped by Marketo (no reason given)", None
    texts, first = [], None
    for reason in reasons:
        if isinstance(reason, dict):
            code = str(reason.get("code", "")) or None
            first = first or code
            texts.append(f"{code or ''} {reason.get('message', '')}".strip())
    return "; ".join(texts)[:MAX_REASON_CHARS] or "skipped by Marketo", first


def _result(item: object) -> SyncResult:
    if not isinstance(item, dict):
        raise ProtocolError("a result of leads.json is not an object")
    status = item.get("status")
    lead_id = item.get("id")
    if status in ("created", "updated"):
        if not isinstance(lead_id, int) or isinstance(lead_id, bool):
            raise ProtocolError(f"a {status} result carries no integer id")
        return SyncResult(lead_id, SyncStatus(str(status).upper()), None)
    if status == "skipped":
        text, code = _reason(item.get("reasons"))
        return SyncResult(None, SyncStatus.FAILED, text, code)
    raise ProtocolError(f"unknown result status {str(status)[:40]!r}")


def parse_response(
    body: bytes,
    *,
    http_status: int,
    content_type: str | None,
    expected: int,
    request_written: bool = True,
) -> list[SyncResult]:
    """One result per sent record, in input order, or the error of the whole call. A 5xx
    page after the request was written is ReplyLost (a gateway gave up; Marketo may still
    apply the call); every unreadable answer is a ProtocolError."""
    if http_status == 413:
        raise BadRequestError("HTTP 413: request body over Marketo's limit; split", code=413)
    document = read_document(
        body,
        http_status=http_status,
        content_type=content_type,
        request_written=request_written,
        what="leads.json",
    )
    results = document.get("result")
    if not isinstance(results, list) or len(results) != expected:
        count = len(results) if isinstance(results, list) else "no"
        raise ProtocolError(f"leads.json answered {count} results for {expected} records")
    return [_result(item) for item in results]


def _call_error(errors: object, what: str) -> MarketoError:
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return ProtocolError(f"{what} failed without an error code")
    first = errors[0]
    code_text = str(first.get("code", ""))
    code = int(code_text) if code_text.isascii() and code_text.isdigit() else None
    message = str(first.get("message", ""))[:300] or "no message"
    return error_for(code, message)


def read_document(
    body: bytes, *, http_status: int, content_type: str | None, request_written: bool, what: str
) -> dict[str, object]:
    """A REST answer's JSON object once Marketo said ``success: true``; otherwise the error
    of the whole call: a 5xx page after the request left is ReplyLost, an unreadable
    answer a ProtocolError, Marketo's own code the branch :func:`error_for` names."""
    if http_status >= 500:
        message = f"HTTP {http_status} from {what}"
        raise ReplyLost(message) if request_written else TransportError(message)
    if http_status != 200:
        raise ProtocolError(f"HTTP {http_status} from {what}")
    if content_type is not None and "json" not in content_type.lower():
        raise ProtocolError(f"{what} answered {content_type.split(';')[0][:60]}, not JSON")
    document = load_json(body, what)
    if not isinstance(document, dict):
        raise ProtocolError(f"{what} answered JSON that is not an object")
    if document.get("success") is not True:
        raise _call_error(document.get("errors"), what)
    return document


def load_json(body: bytes, what: str) -> object:
    """Parse an untrusted JSON body; every failure is a ProtocolError (a deeply nested
    body raises RecursionError, which is not a ValueError)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError, MemoryError):
        raise ProtocolError(
            f"{what} answered malformed, truncated or too deeply nested JSON"
        ) from None
