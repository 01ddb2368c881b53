"""The simulator's lead fields under both protocols: one name mapping, types, describe2 and
describeMObject.

The mapping (one rule, used everywhere in the simulator):

- a lead field is stored under its SOAP name (``known_fields`` in SimConfig, e.g. ``FirstName``);
- its REST API name is the SOAP name with a lower-case first letter (``firstName``), except
  for the names in ``REST_NAME_EXCEPTIONS`` (Marketo's own describe output spells them so);
- a name that already starts lower-case (a custom field such as ``leadsyncPersonId``) is
  the same in both protocols;
- ``Email`` / ``email`` is the lead's email (a key), ``id`` is the lead id (REST only, never
  written); ``rest_dedupe_fields`` are custom fields usable as ``lookupField``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Final

from marketo_sim.soap import FieldMetadata

#: SOAP names whose REST name is not the lower-case-first-letter form.
REST_NAME_EXCEPTIONS: Final[dict[str, str]] = {
    "SICCode": "sicCode",
    "DateofBirth": "dateOfBirth",
}

#: describe2 dataType of the standard fields that are not plain strings.
FIELD_TYPES: Final[dict[str, str]] = {
    "Email": "email",
    "Phone": "phone",
    "MobilePhone": "phone",
    "Fax": "phone",
    "MainPhone": "phone",
    "Website": "url",
    "Address": "text",
    "BillingStreet": "text",
    "LeadScore": "integer",
    "NumberOfEmployees": "integer",
    "RelativeScore": "integer",
    "Urgency": "float",
    "Priority": "integer",
    "LeadPartitionId": "integer",
    "AnnualRevenue": "currency",
    "DateofBirth": "date",
    "DoNotCall": "boolean",
    "Unsubscribed": "boolean",
    "EmailInvalid": "boolean",
    "MarketingSuspended": "boolean",
}
_LENGTH: Final = 255  # describe2 "length" of string-like fields

_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE: Final = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_BOOLEANS: Final = frozenset({"true", "false", "1", "0"})


def rest_name(soap_name: str) -> str:
    """The REST API name of a field stored under ``soap_name``."""
    return REST_NAME_EXCEPTIONS.get(soap_name, soap_name[:1].lower() + soap_name[1:])


def display_name(soap_name: str) -> str:
    """``FirstName`` -> ``First Name`` (describe2 displayName)."""
    if soap_name == "Email":
        return "Email Address"
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", soap_name)


@dataclass(frozen=True, slots=True)
class Field:
    rest: str
    soap: str
    data_type: str


@dataclass(frozen=True, slots=True)
class FieldCatalog:
    """The known fields by REST name, and the REST names allowed as lookupField."""

    by_rest: dict[str, Field]
    lookup_fields: frozenset[str]

    def describe2(self) -> dict[str, Any]:
        """``result[0]`` of GET /rest/v1/leads/describe2.json."""
        fields: list[dict[str, Any]] = [
            {
                "name": "id",
                "displayName": "Id",
                "dataType": "integer",
                "updateable": False,
                "crmManaged": False,
            }
        ]
        for f in sorted(self.by_rest.values(), key=lambda f: f.rest):
            entry: dict[str, Any] = {
                "name": f.rest,
                "displayName": display_name(f.soap),
                "dataType": f.data_type,
            }
            if f.data_type in ("string", "email", "phone", "url"):
                entry["length"] = _LENGTH
            fields.append({**entry, "updateable": True, "crmManaged": False})
        return {
            "name": "API Lead",
            "searchableFields": [[name] for name in sorted(self.lookup_fields)],
            "fields": fields,
        }


def lead_record_fields(
    known_fields: Iterable[str], standard_fields: frozenset[str]
) -> list[FieldMetadata]:
    """``fieldList`` of describeMObject(LeadRecord): the read-only ``Id`` first, then every
    field SOAP calls may write (``known_fields``, by SOAP name, sorted). Custom fields are
    the names outside ``standard_fields``. Which fields Marketo lists for LeadRecord beyond
    these is unknown; the simulator lists what its syncMultipleLeads accepts."""
    fields = [FieldMetadata("Id", "Id", "integer", 10, is_readonly=True, is_primary_key=True)]
    for soap in sorted(known_fields):
        data_type = FIELD_TYPES.get(soap, "string")
        size = _LENGTH if data_type in ("string", "email", "phone", "url") else None
        fields.append(
            FieldMetadata(
                soap, display_name(soap), data_type, size, is_custom=soap not in standard_fields
            )
        )
    return fields


@lru_cache(maxsize=32)
def catalog(known_fields: frozenset[str], dedupe_fields: frozenset[str]) -> FieldCatalog:
    """The catalog of a configuration (cached: configurations are immutable)."""
    by_rest = {
        rest_name(soap): Field(rest_name(soap), soap, FIELD_TYPES.get(soap, "string"))
        for soap in known_fields
    }
    for name in dedupe_fields:
        by_rest.setdefault(name, Field(name, name, "string"))
    return FieldCatalog(by_rest, frozenset({"email", "id"} | dedupe_fields))


def check_field_names(known_fields: Iterable[str], dedupe_fields: Iterable[str]) -> None:
    """Refuse a configuration whose names collide under the mapping, or a bad dedupe field."""
    seen: dict[str, str] = {}
    for soap in known_fields:
        other = seen.setdefault(rest_name(soap), soap)
        if other != soap:
            raise ValueError(f"known_fields {other!r} and {soap!r} share the REST name")
    for name in dedupe_fields:
        if not name or name in ("id", "email") or name[:1] != name[:1].lower():
            raise ValueError(f"rest_dedupe_fields: {name!r} is not a custom REST field name")


def value_ok(data_type: str, value: Any) -> bool:
    """Whether Marketo would take this JSON value for a field of ``data_type``.

    null clears a field of any type. Objects and arrays are never a field value. Strings
    are checked in their text form (Marketo's 1003 examples: 'other' for a boolean, '14.1'
    for an integer, '14c' for a float, 'yesterday' for a datetime, 'bademail').
    """
    if value is None:
        return True
    if isinstance(value, dict | list):
        return False
    text = str(value).lower() if isinstance(value, bool) else str(value).strip()
    if data_type == "boolean":
        return text.lower() in _BOOLEANS
    if isinstance(value, bool):
        return data_type not in ("integer", "float", "currency", "date", "datetime", "email")
    if data_type == "integer":
        return _INT_RE.fullmatch(text) is not None and -(2**31) <= int(text) < 2**31
    if data_type in ("float", "currency"):
        return _FLOAT_RE.fullmatch(text) is not None
    if data_type == "date":
        return _parses(date.fromisoformat, text) and len(text) == 10
    if data_type == "datetime":
        return _parses(datetime.fromisoformat, text.replace("Z", "+00:00"))
    if data_type == "email":
        return text.isascii() and _EMAIL_RE.fullmatch(text) is not None
    return True


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def stored_text(value: Any) -> str:
    """A JSON value as the lead database stores it (SOAP attrValue text; null clears: "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
