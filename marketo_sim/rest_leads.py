"""Sync Leads record rules, applied to the lead database the SOAP side shares.

Per record, in this order (the first that applies decides; Adobe ``leads.md`` and
``error-codes.md``, with the simulator's choices where Marketo's behaviour is unknown):

1. a key given twice in the record's JSON object: skipped 1003 ("Keys must be unique");
2. unknown field names: skipped, one 1006 "Field '<name>' not found" per name;
3. ``id`` with any action but updateOnly: skipped 1003 ("include it only with the updateOnly
   action"); with updateOnly, ``id`` is refused unless it is the lookupField (unknown; the
   strict reading does not guess which key wins);
4. a value of the wrong type (or an email that is not ASCII, malformed, or on a reject
   domain): skipped 1003 "Invalid value for field '<f>' and value '<v>'" (recorded live text);
5. createOrUpdate / updateOnly without a value for the lookupField: skipped 1003 (Bulk
   Import's text; Sync Leads' is unknown);
6. partitionName the API user may not use: skipped 1008;
7. a lookup value already seen earlier in the same input: skipped 1036 "Duplicate object
   found in input" (unknown; the strict reading refuses to depend on in-call ordering);
8. the lookup: createOrUpdate creates (0 matches) or updates (1), updateOnly gives 1004 "Lead
   not found" for 0, createOnly 1005 "Lead already exists" for any match, several matches
   1007; createDuplicate always creates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from marketo_sim.fields import FieldCatalog, stored_text, value_ok
from marketo_sim.rest import Reason, Record, RecordResult, SyncLeadsRequest, skipped
from marketo_sim.state import LeadDatabase, email_problem

MULTIPLE_MATCH: Final = "Multiple leads match the lookup criteria"


@dataclass(slots=True)
class RestSync:
    """One call's context: the request, the catalog and the keys already seen."""

    request: SyncLeadsRequest
    catalog: FieldCatalog
    reject_domains: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ("Default",)
    seen: set[str] = field(default_factory=set)


def record_key(record: Record, lookup_field: str) -> str | None:
    """The lead key of a record for the call log (the SOAP side's spelling where they
    share one): ``id:N`` > ``field:<lookupField>:<value>`` > ``email:<lower>``."""
    lead_id = record.get("id")
    if isinstance(lead_id, int | str) and not isinstance(lead_id, bool) and str(lead_id).strip():
        return f"id:{str(record['id']).strip()}"
    value = record.get(lookup_field)
    if lookup_field not in ("id", "email") and value is not None and str(value) != "":
        return f"field:{lookup_field}:{stored_text(value)}"
    email = record.get("email")
    if isinstance(email, str) and email.strip():
        return f"email:{email.strip().lower()}"
    return None


def _invalid(name: str, value: object) -> RecordResult:
    return skipped(1003, f"Invalid value for field '{name}' and value '{stored_text(value)}'")


def _check(sync: RestSync, record: Record) -> RecordResult | None:
    request, fields = sync.request, sync.catalog.by_rest
    if record.repeated:
        return skipped(1003, f"Invalid data: key '{record.repeated[0]}' given twice")
    unknown = [name for name in record if name != "id" and name not in fields]
    if unknown:
        reasons = tuple(Reason("1006", f"Field '{n}' not found") for n in unknown)
        return RecordResult("skipped", reasons=reasons)
    if "id" in record and (request.action != "updateOnly" or request.lookup_field != "id"):
        return skipped(1003, "Invalid data: id is allowed only with updateOnly and lookupField id")
    if "id" in record and not value_ok("integer", record["id"]):
        return _invalid("id", record["id"])
    for name, value in record.items():
        if name != "id" and not value_ok(fields[name].data_type, value):
            return _invalid(name, value)
    email = record.get("email")
    if isinstance(email, str) and email_problem(email, sync.reject_domains):
        return _invalid("email", email)
    if request.action in ("createOrUpdate", "updateOnly") and _lookup_value(sync, record) is None:
        return skipped(1003, f"Value for lookup field '{request.lookup_field}' not found")
    if request.partition is not None and request.partition not in sync.partitions:
        return skipped(1008, f"Access denied to partition '{request.partition}'")
    return None


def _lookup_value(sync: RestSync, record: Record) -> str | None:
    value = record.get(sync.request.lookup_field)
    text = None if value is None else stored_text(value).strip()
    return text or None


def sync_record(
    db: LeadDatabase, sync: RestSync, record: Record, *, call_id: int, now: float
) -> RecordResult:
    """Apply one input record; return its result row."""
    problem = _check(sync, record)
    if problem is not None:
        return problem
    action, lookup = sync.request.action, sync.request.lookup_field
    value = _lookup_value(sync, record)
    stored_name = "id" if lookup == "id" else sync.catalog.by_rest[lookup].soap
    ids: list[int] = []
    if action != "createDuplicate" and value is not None:
        seen_key = f"{lookup}:{value.lower() if lookup == 'email' else value}"
        if seen_key in sync.seen:
            return skipped(1036, "Duplicate object found in input")
        sync.seen.add(seen_key)
        ids = db.matches(stored_name, value)
    if action == "createOnly" and ids:
        return skipped(1005, "Lead already exists")
    if action == "updateOnly" and not ids:
        return skipped(1004, "Lead not found")
    if len(ids) > 1 and action != "createDuplicate":
        return skipped(1007, MULTIPLE_MATCH)
    lead = db.leads[ids[0]] if ids and action in ("createOrUpdate", "updateOnly") else None
    attributes = {
        sync.catalog.by_rest[name].soap: stored_text(v)
        for name, v in record.items()
        if name != "id"
    }
    email = record.get("email")
    lead, created = db.write(
        lead,
        email=email.strip() if isinstance(email, str) and email.strip() else None,
        set_email="email" in record or lead is None,
        attributes=attributes,
        call_id=call_id,
        now=now,
        protocol="rest",
    )
    return RecordResult("created" if created else "updated", lead.lead_id)
