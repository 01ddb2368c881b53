"""Pure isolation planning: which records to fail, and what to send next, when a record
makes a whole syncMultipleLeads call fault.

Calls are the scarce resource, so isolation costs calls per bad FIELD, not per record:

* 20105 names the unknown fields (``unknown fields for import: A, B (20105)``; the codec
  reads them into ``BadRequestError.fields``): every record carrying one of them fails in
  one step, and the rest go out again together.
  A batch whose every record carries one unknown field costs one call.
* Any other record fault (or a 20105 whose names match no record) splits the batch in
  halves until the faulting record is alone, within a budget of
  :func:`isolation_budget` calls per batch; records still unresolved when it is spent are
  dead-lettered (replayable) instead of burning more of the shared quota.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from worker.core.batching import BatchRecord


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


def split_after_fault(records: Sequence[BatchRecord], fields: frozenset[str]) -> Split:
    """Decide the next step after ``records`` faulted the call as a whole; ``fields`` are
    the unknown attribute names the fault named (case-folded), if any."""
    bad = carrying(records, fields) if fields else []
    if bad:
        failing = {id(r) for r in bad}
        rest = tuple(r for r in records if id(r) not in failing)
        return Split(tuple(bad), (rest,) if rest else ())
    if len(records) == 1:
        return Split(tuple(records), ())
    middle = len(records) // 2
    return Split((), (tuple(records[:middle]), tuple(records[middle:])))
