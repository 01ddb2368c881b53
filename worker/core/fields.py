"""One mapping between the two spellings of a Marketo lead field: the SOAP attribute name
(``FirstName``) and the REST API name (``firstName``).

The rule: the REST name is the SOAP name with its leading capitals lower-cased as one
word (``FirstName`` -> ``firstName``, ``SICCode`` -> ``sicCode``, ``Email`` -> ``email``),
and the SOAP name is the REST name with its first letter upper-cased, except for names
that start with an acronym, which :data:`ACRONYM_NAMES` spells out; the standard fields
the rule misspells either way are in :data:`IRREGULAR_NAMES` (``DateofBirth`` is
``dateOfBirth``). An app may send either spelling whatever the
protocol, and merging treats both as one field (the newest spelling and value win).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

#: Standard fields whose SOAP name starts with an acronym: upper-casing the first letter
#: of the REST name does not give it back (``sfdcId`` is ``SFDCId``, not ``SfdcId``).
ACRONYM_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sfdcId": "SFDCId",
        "sfdcLeadId": "SFDCLeadId",
        "sfdcContactId": "SFDCContactId",
        "sfdcAccountId": "SFDCAccountId",
        "sfdcLeadOwnerId": "SFDCLeadOwnerId",
        "sfdcOpptyId": "SFDCOpptyId",
        "sfdcType": "SFDCType",
        "sicCode": "SICCode",
    }
)
#: Standard fields whose two names differ by more than the rule (SOAP -> REST).
IRREGULAR_NAMES: Final[Mapping[str, str]] = MappingProxyType({"DateofBirth": "dateOfBirth"})
_IRREGULAR_SOAP: Final = MappingProxyType({v: k for k, v in IRREGULAR_NAMES.items()})


def rest_name(name: str) -> str:
    """The REST API spelling of a lead field given in either spelling."""
    irregular = IRREGULAR_NAMES.get(name)
    if irregular is not None:
        return irregular
    capitals = len(name) - len(name.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    if capitals == 0:
        return name
    if capitals == 1 or capitals == len(name):
        return name[:capitals].lower() + name[capitals:]
    # An acronym in front ("SICCode"): its last capital starts the next word.
    return name[: capitals - 1].lower() + name[capitals - 1 :]


def soap_name(name: str) -> str:
    """The SOAP spelling of a lead field given in either spelling."""
    rest = rest_name(name)
    known = ACRONYM_NAMES.get(rest) or _IRREGULAR_SOAP.get(rest)
    if known is not None:
        return known
    return name if name[:1].isupper() else name[:1].upper() + name[1:]


def field_key(name: str) -> str:
    """One key per field whatever its spelling or case (Marketo's names are case-blind)."""
    return rest_name(name).casefold()


def merge_attributes(older: Mapping[str, str], newer: Mapping[str, str]) -> dict[str, str]:
    """``newer`` wins per field, both spellings of a field counting as one."""
    merged: dict[str, tuple[str, str]] = {rest_name(k): (k, v) for k, v in older.items()}
    merged.update({rest_name(k): (k, v) for k, v in newer.items()})
    return dict(merged.values())
