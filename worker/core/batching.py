"""Pure batching: merge queued upserts per lead key and cut them into calls.

Rules: entries with the same lead key merge into one record (last write wins per
attribute, and every merged request id gets the record's outcome); entries with
dedup=false are never merged and travel in dedup=false calls; no call carries
more than ``batch_size`` records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from producers.contract import LeadUpsert, entry_order
from worker.core.fields import merge_attributes


@dataclass(frozen=True, slots=True)
class QueuedLead:
    """A decoded ledger entry. ``origin`` is the id of the write a replayed entry
    carries: merges order by it, so a replayed old write never beats a newer one."""

    entry_id: str
    key_hash: str
    lead: LeadUpsert
    origin: str | None = None

    @property
    def order(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return entry_order(self.origin or self.entry_id), entry_order(self.entry_id)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One lead in a call and the entries it answers for."""

    key_hash: str
    lead: LeadUpsert
    entry_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """The records of one syncMultipleLeads call."""

    dedup: bool
    records: tuple[BatchRecord, ...]

    @property
    def entry_ids(self) -> list[str]:
        return [entry_id for record in self.records for entry_id in record.entry_ids]

    def __len__(self) -> int:
        return len(self.records)


def merge_leads(older: LeadUpsert, newer: LeadUpsert) -> LeadUpsert:
    """The newer upsert wins per attribute (either spelling of a field is that field);
    keys the newer one lacks are kept."""
    return replace(
        newer,
        email=newer.email if newer.email is not None else older.email,
        marketo_id=newer.marketo_id if newer.marketo_id is not None else older.marketo_id,
        foreign_sys_person_id=newer.foreign_sys_person_id or older.foreign_sys_person_id,
        foreign_sys_type=newer.foreign_sys_type or older.foreign_sys_type,
        attributes=merge_attributes(older.attributes, newer.attributes),
    )


def coalesce(entries: Iterable[QueuedLead]) -> list[BatchRecord]:
    """Merge entries per lead key in write order (a replayed entry at its original
    place); dedup=false entries stay apart."""
    records: list[BatchRecord] = []
    index_by_key: dict[str, int] = {}
    for entry in sorted(entries, key=lambda item: item.order):
        if not entry.lead.dedup:
            records.append(BatchRecord(entry.key_hash, entry.lead, (entry.entry_id,)))
            continue
        position = index_by_key.get(entry.key_hash)
        if position is None:
            index_by_key[entry.key_hash] = len(records)
            records.append(BatchRecord(entry.key_hash, entry.lead, (entry.entry_id,)))
        else:
            merged = records[position]
            records[position] = BatchRecord(
                entry.key_hash,
                merge_leads(merged.lead, entry.lead),
                (*merged.entry_ids, entry.entry_id),
            )
    return records


def chunk(records: Sequence[BatchRecord], batch_size: int) -> list[Batch]:
    """Cut records into calls of at most ``batch_size``, dedup=true and dedup=false apart."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    batches: list[Batch] = []
    for dedup in (True, False):
        group = [record for record in records if record.lead.dedup is dedup]
        for start in range(0, len(group), batch_size):
            batches.append(Batch(dedup, tuple(group[start : start + batch_size])))
    return batches


def plan_batches(entries: Iterable[QueuedLead], batch_size: int) -> list[Batch]:
    """Coalesce then chunk: the calls one drain cycle will make, fullest first."""
    batches = chunk(coalesce(entries), batch_size)
    return sorted(batches, key=len, reverse=True)
