"""The lead contract: the lead model, its validation and normalisation, the lead key and
its shard. Pure Python with no I/O, so producers and the worker's SOAP codec share
exactly the same rules."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from producers.email import check_email
from producers.errors import InvalidLead

ForeignSysType = Literal["CUSTOM", "SFDC", "NETSUITE"]
FOREIGN_SYS_TYPES: Final = ("CUSTOM", "SFDC", "NETSUITE")
MAX_LEAD_ID: Final = 2**31 - 1  # LeadRecord.Id is xs:int
MAX_VALUE_CHARS: Final = 64 * 1024
MAX_ATTRIBUTES: Final = 500
#: A Marketo field API name (``FirstName``, ``leadScore``, ``Custom_Field__c``): ASCII
#: letters, digits and underscores, as openapi.json's attribute ``propertyNames`` pattern.
ATTRIBUTE_NAME_PATTERN: Final = "^[A-Za-z0-9_]+$"
_ATTRIBUTE_NAME_RE: Final = re.compile("[A-Za-z0-9_]+")

# Characters outside XML 1.0's Char production; lone surrogates included.
_ILLEGAL_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class LeadUpsert:
    """One validated lead upsert, as a web app asked for it."""

    email: str | None = None
    marketo_id: int | None = None
    foreign_sys_person_id: str | None = None
    foreign_sys_type: ForeignSysType | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    dedup: bool = True

    @property
    def key(self) -> str:
        """The lead key: Marketo Id > ForeignSysPersonId (+type) > email, as Marketo matches."""
        return lead_key(self)


def check_xml_text(field_name: str, value: str) -> None:
    """Raise InvalidLead when ``value`` cannot travel in an XML 1.0 document."""
    match = _ILLEGAL_XML_CHARS.search(value)
    if match:
        raise InvalidLead(
            field_name, f"character U+{ord(match.group()):04X} is not allowed in XML 1.0"
        )
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidLead(field_name, f"longer than {MAX_VALUE_CHARS} characters")


def _optional_text(field_name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidLead(field_name, f"must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        return None
    check_xml_text(field_name, value)
    return value


def _attribute_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        # str() would send "nan" or "inf" as the field's text.
        raise InvalidLead(f"attributes.{name}", "must be a finite number, not NaN or infinity")
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise InvalidLead(
            f"attributes.{name}", f"must be a string or number, not {type(value).__name__}"
        )
    check_xml_text(f"attributes.{name}", value)
    return value


def validate_lead(
    *,
    email: object = None,
    marketo_id: object = None,
    foreign_sys_person_id: object = None,
    foreign_sys_type: object = None,
    attributes: object = None,
    dedup: object = True,
) -> LeadUpsert:
    """Check one upsert and return it normalised; raise InvalidLead naming the field.

    >>> validate_lead(email=" Ann@Example.com ").key
    'email:ann@example.com'
    """
    clean_email = _optional_text("email", email)
    if clean_email is not None:
        check_email(clean_email)

    clean_id: int | None = None
    if marketo_id is not None:
        if isinstance(marketo_id, bool) or not isinstance(marketo_id, int | str):
            raise InvalidLead("marketo_id", "must be a positive integer")
        try:
            clean_id = int(marketo_id)
        except ValueError:
            raise InvalidLead("marketo_id", "must be a positive integer") from None
        if not 1 <= clean_id <= MAX_LEAD_ID:
            raise InvalidLead("marketo_id", f"must be between 1 and {MAX_LEAD_ID}")

    clean_fsp = _optional_text("foreign_sys_person_id", foreign_sys_person_id)
    clean_fst = _optional_text("foreign_sys_type", foreign_sys_type)
    if clean_fsp is not None and clean_fst is None:
        raise InvalidLead("foreign_sys_type", "is required with foreign_sys_person_id")
    if clean_fst is not None:
        if clean_fst.upper() not in FOREIGN_SYS_TYPES:
            raise InvalidLead("foreign_sys_type", f"must be one of {', '.join(FOREIGN_SYS_TYPES)}")
        if clean_fsp is None:
            raise InvalidLead("foreign_sys_person_id", "is required with foreign_sys_type")
        clean_fst = clean_fst.upper()

    if clean_email is None and clean_id is None and clean_fsp is None:
        raise InvalidLead(
            "lead", "needs at least one key: email, marketo_id or foreign_sys_person_id"
        )

    clean_attributes: dict[str, str] = {}
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise InvalidLead("attributes", "must be a mapping of attribute name to value")
        if len(attributes) > MAX_ATTRIBUTES:
            raise InvalidLead("attributes", f"more than {MAX_ATTRIBUTES} attributes")
        for name, value in attributes.items():
            if not isinstance(name, str) or not name.strip():
                raise InvalidLead("attributes", "attribute names must be non-empty strings")
            check_xml_text("attributes", name)
            name = name.strip()
            if not _ATTRIBUTE_NAME_RE.fullmatch(name):
                raise InvalidLead(
                    f"attributes.{name}",
                    "is not a Marketo field API name: letters, digits and underscores only",
                )
            if value is None:
                raise InvalidLead(f"attributes.{name}", "must not be null")
            clean_attributes[name] = _attribute_value(name, value)

    if not isinstance(dedup, bool):
        raise InvalidLead("dedup", "must be true or false")

    return LeadUpsert(
        email=clean_email,
        marketo_id=clean_id,
        foreign_sys_person_id=clean_fsp,
        foreign_sys_type=clean_fst,  # type: ignore[arg-type]
        attributes=clean_attributes,
        dedup=dedup,
    )


def check_known_fields(lead: LeadUpsert, known: frozenset[str] | None) -> LeadUpsert:
    """Refuse an attribute Marketo would not know (``known``: case-folded names from
    LEADSYNC_KNOWN_FIELDS; None accepts any). One unknown name would otherwise fault the
    whole call (20105) in the worker, long after the app could have been told."""
    if known:
        for name in lead.attributes:
            if name.casefold() not in known:
                raise InvalidLead(
                    f"attributes.{name}",
                    "is not a field of this Marketo instance (LEADSYNC_KNOWN_FIELDS)",
                )
    return lead


#: How lead keys are made when leads go to Marketo over SOAP: syncMultipleLeads matches a
#: lead by Id > ForeignSysPersonId > Email, so the key follows that priority.
SOAP_KEY_RULE: Final = "soap"


def key_rule(api: str, lookup_field: str) -> str:
    """The key rule of a deployment: ``soap``, or ``rest:<lookupField>`` (REST Sync Leads
    matches a lead by the value of its lookupField only, so that value is the key)."""
    return SOAP_KEY_RULE if api != "rest" else f"rest:{lookup_field}"


def lead_key(lead: LeadUpsert, rule: str = SOAP_KEY_RULE) -> str:
    """The key that orders a lead's writes and keeps them out of concurrent calls: the key
    Marketo matches the lead by. SOAP: Marketo Id > ForeignSysPersonId (+type) > email
    (trimmed, lower-cased). REST (``rest:<lookupField>``): the lookup value alone; a lead
    without one is refused (InvalidLead), since Marketo could not find it."""
    if rule.startswith("rest:"):
        return _lookup_key(lead, rule.removeprefix("rest:"))
    if lead.marketo_id is not None:
        return f"id:{lead.marketo_id}"
    if lead.foreign_sys_person_id is not None:
        return f"fsp:{lead.foreign_sys_type}:{lead.foreign_sys_person_id}"
    assert lead.email is not None  # validate_lead guarantees a key
    return f"email:{lead.email.lower()}"


def key_digest(key: str) -> str:
    """A short stable hash of a lead key: what logs, metrics and Redis key names carry."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()


def shard_for(key: str, shards: int) -> int:
    """The shard of a lead key: a stable hash, identical in every process and release."""
    # blake2b, not crc32: crc32 is linear and crowds same-length keys such as
    # user10@.. user99@.. onto a few shards when the count is a power of two.
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def _lookup_key(lead: LeadUpsert, lookup: str) -> str:
    """The REST key: what worker.marketo.rest.codec sends as the lookupField's value."""
    if lookup == "email":
        if lead.email is None:
            raise InvalidLead(
                "email",
                "is required: Marketo REST looks leads up by email "
                "(LEADSYNC_MARKETO_LOOKUP_FIELD=email)",
            )
        return f"email:{lead.email.lower()}"
    if lookup == "id":
        if lead.marketo_id is None:
            raise InvalidLead(
                "marketo_id",
                "is required: Marketo REST looks leads up by id (LEADSYNC_MARKETO_LOOKUP_FIELD=id)",
            )
        return f"id:{lead.marketo_id}"
    value: str | None = lead.foreign_sys_person_id
    if value is None:
        folded = lookup.casefold()
        value = next((v for n, v in lead.attributes.items() if n.casefold() == folded), None)
    if value is None:
        raise InvalidLead(
            "foreign_sys_person_id",
            f"is required (or the attribute {lookup}): Marketo REST looks leads up by "
            f"{lookup} (LEADSYNC_MARKETO_LOOKUP_FIELD)",
        )
    return f"{lookup.casefold()}:{value}"
