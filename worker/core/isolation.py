"""Pure isolation planning: which records to fail, and what to send next, when a record
makes a whole syncMultipleLeads call fault.

Calls are the scarce resource, so isolation costs calls per bad FIELD, not per record:

* 20105 names the unknown fields (``unknown fields for import: A, B (20105)``; the codec
  reads them into ``BadRequestError.fields``, without quotes, case-blind): every record
  carrying one of them fails in one step, and the rest go out again together. When the
  parsed names match no record (a name quoted oddly, cut short, or holding a comma or a
  space), the batch's own attribute names are looked for in the text that named them.
  A batch whose every record carries one unknown field costs one call.
* Any other record fault (or a 20105 whose names still match no record) splits the batch
  in halves until the faulting record is alone: only a record proven bad alone fails. A
  cycle spends at most :func:`isolation_budget` calls on it; records not yet proven either
  way then stay pending, their attempts given back (a neighbour's fault never spends
  them), and the next cycle goes on. Each cycle resolves at least one record, so this ends.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from producers.contract import LeadUpsert
from worker.core.batching import BatchRecord, merge_leads

#: Each write of a call by (lead key digest, entry id): two shards may give one id to two
#: entries, a lead's key lives in one shard.
Writes = Mapping[tuple[str, str], LeadUpsert]


def carrying(records: Iterable[BatchRecord], fields: frozenset[str]) -> list[BatchRecord]:
    """The records with an attribute among ``fields`` (Marketo's names are case-blind)."""
    return [r for r in records if any(name.casefold() in fields for name in r.lead.attributes)]


def isolation_budget(records: int) -> int:
    """Calls one batch may spend isolating faulting records, beyond its first call: a few
    bisections of the batch (each about log2(n) calls) plus a little slack."""
    return 2 * math.ceil(math.log2(max(records, 2))) + 4


@dataclass(frozen=True, slots=True)
class Split:
    """What a whole-call record fault leads to: records to fail now (with the fault), and
    the groups of records to send next, in order."""

    failed: tuple[BatchRecord, ...]
    next_calls: tuple[tuple[BatchRecord, ...], ...]
    #: The unknown fields that pinned ``failed`` (case-folded); empty when bisection did.
    names: frozenset[str] = frozenset()


def guilty_entries(record: BatchRecord, names: frozenset[str], writes: Writes) -> tuple[str, ...]:
    """The entries of a failed record whose own write carries one of ``names``. A record
    merges a lead's writes: a write that set no unknown field is no part of the fault,
    and stays pending to go out without the bad one. Without names (bisection proved the
    merged record bad as a whole) or without the writes, every entry is."""
    if not names or len(record.entry_ids) == 1:
        return record.entry_ids
    guilty = tuple(
        entry_id
        for entry_id in record.entry_ids
        if (record.key_hash, entry_id) not in writes
        or any(name.casefold() in names for name in writes[(record.key_hash, entry_id)].attributes)
    )
    return guilty or record.entry_ids


def named_in(text: str, names: Iterable[str]) -> frozenset[str]:
    """Those of ``names`` that ``text`` names as whole words, case-blind (case-folded):
    how a field is found in a 20105 whose list could not be split into names."""
    folded = text.casefold()
    return frozenset(
        name.casefold()
        for name in names
        if name.strip()
        and re.search(rf"(?<![\w]){re.escape(name.casefold())}(?![\w])", folded) is not None
    )


def peel_newest(record: BatchRecord, writes: Writes | None) -> BatchRecord | None:
    """A record merging several writes of a lead that failed (on its own, or alone in a
    call that faulted) is not proven bad as a whole: any one write may carry the bad value
    or field. The merge of all its writes but the newest, to send next (the newest stays
    pending for a later cycle); None when the record is one write, or its writes are not
    known (it is then proven bad). Always a prefix of the lead's writes, so it never
    applies an older value over a newer one Marketo may hold already (from a call whose
    answer was lost): the oldest write alone could."""
    keys = [(record.key_hash, entry_id) for entry_id in record.entry_ids[:-1]]
    if not keys or not writes or any(key not in writes for key in keys):
        return None
    lead = functools.reduce(merge_leads, (writes[key] for key in keys))
    return BatchRecord(record.key_hash, lead, record.entry_ids[:-1])


def split_after_fault(
    records: Sequence[BatchRecord],
    fields: frozenset[str],
    named_text: str = "",
    writes: Writes | None = None,
) -> Split:
    """Decide the next step after ``records`` faulted the call as a whole; ``fields`` are
    the unknown attribute names the fault named (case-folded), if any, and ``named_text``
    the fault's text that named them. ``writes`` holds each entry's own write: a record
    merging several writes of a lead that faults alone is not proven bad as a whole (any
    one write may carry the fault), so its oldest write goes alone next and the lead's
    later writes stay pending for later cycles, in write order."""
    names = fields
    bad = carrying(records, names) if names else []
    if not bad and named_text:
        names = named_in(named_text, {n for record in records for n in record.lead.attributes})
        bad = carrying(records, names)
    if bad:
        failing = {id(r) for r in bad}
        rest = tuple(r for r in records if id(r) not in failing)
        return Split(tuple(bad), (rest,) if rest else (), names)
    if len(records) == 1:
        peeled = peel_newest(records[0], writes)
        return Split((), ((peeled,),)) if peeled else Split(tuple(records), ())
    middle = len(records) // 2
    return Split((), (tuple(records[:middle]), tuple(records[middle:])))
