"""The lead fields producers accept: configured (LEADSYNC_KNOWN_FIELDS, ``known_fields=``)
or learned by a worker from Marketo's describe and shared in Redis.

The learned set is one hash at ``Keys.known_fields()``, replaced whole at each refresh: every
case-folded spelling of every lead field Marketo listed (its SOAP and its REST name) -> the
name as Marketo spelled it, plus the metadata fields below, whose names start with ``@``
(no Marketo field name does). A producer reads it with its shard-count handshake and looks
again every minute; with nothing stored it accepts any attribute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from producers.errors import InvalidLead
from producers.lead import LeadUpsert, check_known_fields

#: When the fields were learned (Unix seconds, as text): also the version a producer
#: compares to know whether to read the set again.
LEARNED_AT_FIELD: Final = "@learned_at"
#: Which describe call listed them (``SOAP describeMObject``, ``REST describe2.json``).
SOURCE_FIELD: Final = "@source"
#: How many fields Marketo listed (each is stored under one or two spellings).
COUNT_FIELD: Final = "@count"
_META: Final = "@"

#: The reason of an InvalidLead for an attribute the learned set lacks.
LEARNED_REASON: Final = (
    "is not a field of this Marketo instance (learned from Marketo's describe; a field "
    "added in Marketo since is learned at the next refresh, LEADSYNC_KNOWN_FIELDS overrides)"
)


@dataclass(frozen=True, slots=True)
class KnownFields:
    """Case-folded attribute names Marketo knows. ``learned_at`` is None for a configured
    list, else when a worker learned them from Marketo's describe (``source``, ``count``)."""

    names: frozenset[str]
    learned_at: float | None = None
    source: str = ""
    count: int = 0

    @property
    def learned(self) -> bool:
        return self.learned_at is not None

    def check(self, lead: LeadUpsert) -> LeadUpsert:
        """``lead``, or InvalidLead naming the first attribute Marketo would not know
        (Marketo's names are case-blind, so the names are compared case-folded)."""
        if not self.learned:
            return check_known_fields(lead, self.names)
        for name in lead.attributes:
            if name.casefold() not in self.names:
                raise InvalidLead(f"attributes.{name}", LEARNED_REASON)
        return lead


def configured(names: frozenset[str] | None) -> KnownFields | None:
    """The configured list (already case-folded) as KnownFields; None accepts any."""
    return KnownFields(names) if names else None


def encode_known_fields(
    spellings: Mapping[str, str], *, learned_at: float, source: str, count: int
) -> dict[str, str]:
    """The hash a worker stores: case-folded spelling -> name, and the metadata."""
    stored = {name.casefold(): spelled for name, spelled in spellings.items()}
    stored[LEARNED_AT_FIELD] = f"{learned_at:.6f}"
    stored[SOURCE_FIELD] = source
    stored[COUNT_FIELD] = str(count)
    return stored


def decode_known_fields(reply: object) -> tuple[str | None, KnownFields | None]:
    """``HGETALL`` of the learned set (a mapping, or a flat list of field, value): its
    version (the learned-at text) and the fields, or (None, None) when none are stored.
    A set without names or without its learned-at is read as none (any attribute goes)."""
    pairs: dict[str, str] = {}
    if isinstance(reply, Mapping):
        pairs = {_text(k): _text(v) for k, v in reply.items()}
    elif isinstance(reply, Sequence) and not isinstance(reply, str | bytes):
        items = list(reply)
        pairs = {_text(k): _text(v) for k, v in zip(items[::2], items[1::2], strict=False)}
    version = pairs.get(LEARNED_AT_FIELD)
    names = frozenset(name for name in pairs if not name.startswith(_META))
    if version is None or not names:
        return None, None
    try:
        learned_at = float(version)
    except ValueError:
        return None, None
    count = pairs.get(COUNT_FIELD, "")
    return version, KnownFields(
        names,
        learned_at=learned_at,
        source=pairs.get(SOURCE_FIELD, ""),
        count=int(count) if count.isdigit() else len(names),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
