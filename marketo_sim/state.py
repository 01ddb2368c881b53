"""The simulated lead database and Marketo's upsert rules for syncMultipleLeads.

Rules (Marketo docs, syncMultipleLeads / syncLead):

- key priority Id > ForeignSysPersonId (+ ForeignSysType) > Email;
- with an Id, a ForeignSysPersonId in the record is (re)assigned to that lead;
- Email is only ever changed through an ``Email`` attribute, never through the key;
- Email is the only non-unique key: with ``dedupEnabled`` true and no unique key the record
  matches a lead by email, with false it always creates a new lead;
- an unknown Id, an invalid email or an email on a reject domain gives FAILED for that record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from marketo_sim.soap import ParsedRecord, SyncStatus

_EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(slots=True)
class Write:
    """One change to a lead, kept for the admin API's write history."""

    call_id: int
    status: str
    at: float
    attributes: dict[str, str]
    protocol: str = "soap"


@dataclass(slots=True)
class Lead:
    lead_id: int
    email: str | None
    foreign_ids: dict[str, str] = field(default_factory=dict)  # ForeignSysType -> id
    attributes: dict[str, str] = field(default_factory=dict)
    history: list[Write] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.lead_id,
            "email": self.email,
            "fsp": [{"type": t, "id": v} for t, v in sorted(self.foreign_ids.items())],
            "attributes": dict(self.attributes),
            "history": [
                {
                    "call_id": w.call_id,
                    "status": w.status,
                    "at": w.at,
                    "attributes": w.attributes,
                    "protocol": w.protocol,
                }
                for w in self.history
            ],
        }


def email_problem(email: str, reject_domains: tuple[str, ...]) -> str | None:
    """Why Marketo would refuse this email, or None."""
    if not _EMAIL_RE.fullmatch(email.strip()):
        return "Invalid email address"
    domain = email.strip().rsplit("@", 1)[1].lower()
    if any(domain == d.lower() or domain.endswith("." + d.lower()) for d in reject_domains):
        return "Email address rejected: domain does not accept mail"
    return None


class LeadDatabase:
    """Leads by id, with unique indexes for ForeignSysPersonId and a non-unique email index."""

    def __init__(self, first_lead_id: int = 1) -> None:
        self.leads: dict[int, Lead] = {}
        self._next_id = first_lead_id
        self._by_fsp: dict[tuple[str, str], int] = {}
        self._by_email: dict[str, list[int]] = {}
        # Custom dedupe fields (REST lookupField), indexed on first use: name -> value -> ids.
        self._by_attr: dict[str, dict[str, list[int]]] = {}

    def sync(
        self,
        record: ParsedRecord,
        *,
        dedup: bool,
        call_id: int,
        now: float,
        reject_domains: tuple[str, ...] = (),
    ) -> SyncStatus:
        """Apply one leadRecord; return its syncStatus."""
        attributes = {a.name: a.value for a in record.attributes}
        new_email = attributes.get("Email")
        for email in (record.email, new_email):
            if email is not None:
                problem = email_problem(email, reject_domains)
                if problem is not None:
                    return SyncStatus(0, "FAILED", problem)
        fsp = None
        if record.foreign_sys_person_id is not None:
            if record.foreign_sys_type is None:
                return SyncStatus(0, "FAILED", "ForeignSysType is required with ForeignSysPersonId")
            fsp = (record.foreign_sys_type, record.foreign_sys_person_id)

        lead: Lead | None
        if record.lead_id is not None:
            lead = self.leads.get(record.lead_id)
            if lead is None:
                return SyncStatus(0, "FAILED", "Lead not found")
        elif fsp is not None:
            lead_id = self._by_fsp.get(fsp)
            lead = None if lead_id is None else self.leads[lead_id]
        elif record.email is not None:
            lead = self._find_by_email(record.email) if dedup else None
        else:
            return SyncStatus(0, "FAILED", "Lead key required: Id, ForeignSysPersonId or Email")

        lead, created = self.write(
            lead,
            email=new_email if new_email is not None else record.email,
            set_email=lead is None or new_email is not None,
            attributes=attributes,
            call_id=call_id,
            now=now,
        )
        if fsp is not None:
            self._assign_fsp(lead, fsp)
        return SyncStatus(lead.lead_id, "CREATED" if created else "UPDATED")

    def write(
        self,
        lead: Lead | None,
        *,
        email: str | None,
        set_email: bool,
        attributes: dict[str, str],
        call_id: int,
        now: float,
        protocol: str = "soap",
    ) -> tuple[Lead, bool]:
        """Create a lead (``lead`` None) or update one; ``attributes`` by stored (SOAP) name,
        ``Email`` among them only for the history. Return the lead and whether it is new."""
        created = lead is None
        if lead is None:
            lead = Lead(lead_id=self._next_id, email=None)
            self._next_id += 1
            self.leads[lead.lead_id] = lead
        if set_email:
            self._set_email(lead, email)
        for name, index in self._by_attr.items():
            if name in attributes:
                _unindex(index, lead.attributes.get(name), lead.lead_id)
                index.setdefault(attributes[name], []).append(lead.lead_id)
        lead.attributes.update({k: v for k, v in attributes.items() if k != "Email"})
        lead.history.append(
            Write(
                call_id=call_id,
                status="CREATED" if created else "UPDATED",
                at=now,
                attributes=attributes,
                protocol=protocol,
            )
        )
        return lead, created

    def matches(self, name: str, value: str) -> list[int]:
        """Ids of the leads whose ``name`` (``id``, ``Email`` or a stored attribute name)
        equals ``value``: email case-insensitively, custom fields exactly (unknown in
        Marketo; the exact reading never merges two distinct values)."""
        if name == "id":
            return [int(value)] if int(value) in self.leads else []
        if name == "Email":
            return list(self._by_email.get(value.strip().lower(), []))
        index = self._by_attr.get(name)
        if index is None:
            index = self._by_attr[name] = {}
            for lead in self.leads.values():
                if name in lead.attributes:
                    index.setdefault(lead.attributes[name], []).append(lead.lead_id)
        return list(index.get(value, []))

    def _find_by_email(self, email: str) -> Lead | None:
        ids = self._by_email.get(email.strip().lower(), [])
        if not ids:
            return None
        # Several leads can share an email (dedup off); the newest one is matched.
        return self.leads[max(ids)]

    def _set_email(self, lead: Lead, email: str | None) -> None:
        if lead.email is not None:
            ids = self._by_email.get(lead.email.strip().lower(), [])
            if lead.lead_id in ids:
                ids.remove(lead.lead_id)
        lead.email = email
        if email is not None:
            self._by_email.setdefault(email.strip().lower(), []).append(lead.lead_id)

    def _assign_fsp(self, lead: Lead, fsp: tuple[str, str]) -> None:
        # A ForeignSysPersonId is unique: assigning it moves it away from any other lead.
        previous = self._by_fsp.get(fsp)
        if previous is not None and previous != lead.lead_id:
            self.leads[previous].foreign_ids.pop(fsp[0], None)
        old = lead.foreign_ids.get(fsp[0])
        if old is not None and old != fsp[1]:
            self._by_fsp.pop((fsp[0], old), None)
        lead.foreign_ids[fsp[0]] = fsp[1]
        self._by_fsp[fsp] = lead.lead_id

    def to_json(self) -> list[dict[str, Any]]:
        return [lead.to_json() for lead in self.leads.values()]


def _unindex(index: dict[str, list[int]], value: str | None, lead_id: int) -> None:
    if value is not None and lead_id in index.get(value, []):
        index[value].remove(lead_id)
