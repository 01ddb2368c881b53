"""Which fields of a replayed write a newer write already set (pure).

Upserts merge per field, so a newer write replaces only the fields it sets. While a lead
has parked writes, the settle step records each field a write of the lead set that
Marketo applied or may have applied (acknowledged, parked, or sent in a call whose answer
was lost), with the id of the newest such write; a replayed write whose original is
older than that id must not send the field again (it would revert a newer value)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from producers.contract import entry_order
from worker.core.fields import field_key

#: Why a replayed write is answered without a call.
SUPERSEDED_REASON: Final = (
    "superseded: every field this write set was set by a newer write that Marketo applied "
    "or may have applied (or that is parked to be replayed after it)"
)


def set_after(write_id: str | None, origin: str) -> bool:
    """True when ``write_id`` (the newest applied write that set a field) is newer than
    the write ``origin``."""
    return write_id is not None and entry_order(origin) < entry_order(write_id)


def set_since(names: Iterable[str], written: Mapping[str, str], origin: str) -> list[str]:
    """Those of ``names`` a write newer than ``origin`` set (``written``: field key -> id)."""
    return [name for name in names if set_after(written.get(field_key(name)), origin)]
