"""What a drain works with and reports: its status and counts, each leased shard's lane
through a cycle, and one answer per batch record."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from producers.contract import OutcomeStatus
from worker.core.batching import BatchRecord, QueuedLead
from worker.errors import InvalidLead
from worker.ledger import RawEntry, Settlement

DrainStatus = Literal["busy", "idle", "waiting", "sent", "limited", "held", "backoff"]

#: Awaited at the points of a cycle where a crash is most interesting (tests pause there).
Checkpoint = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class DrainReport:
    """What one drain (up to LEADSYNC_BATCHES_PER_DRAIN cycles) did; counts only (it travels into
    Celery results and Flower)."""

    shard: int
    status: DrainStatus = "idle"
    calls: int = 0
    leads_sent: int = 0
    entries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    #: Calls spent finding the records that faulted whole calls (beyond each first call).
    isolation_calls: int = 0
    backlog: int = 0
    retry_after_s: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "shard": self.shard,
            "status": self.status,
            "calls": self.calls,
            "leads_sent": self.leads_sent,
            "entries": self.entries,
            "outcomes": dict(self.outcomes),
            "dead_lettered": self.dead_lettered,
            "isolation_calls": self.isolation_calls,
            "backlog": self.backlog,
            "retry_after_s": self.retry_after_s,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class RecordResult:
    """The answer for one batch record: a SyncResult or a fault that isolated it."""

    record: BatchRecord
    status: OutcomeStatus
    lead_id: int | None = None
    error: str | None = None
    error_code: str | None = None
    #: The entries this answers, when not every entry merged into the record (a failed
    #: record's writes that carry no bad field stay pending).
    only: tuple[str, ...] | None = None

    @property
    def entry_ids(self) -> tuple[str, ...]:
        return self.record.entry_ids if self.only is None else self.only


@dataclass(slots=True)
class Claim:
    """What one cycle claimed: decoded leads, undecodable entries, every raw entry."""

    queued: list[QueuedLead] = field(default_factory=list)
    invalid: list[tuple[RawEntry, InvalidLead]] = field(default_factory=list)
    raw: dict[str, RawEntry] = field(default_factory=dict)
    #: Replayed entries every one of whose fields a newer applied write set.
    superseded: list[RawEntry] = field(default_factory=list)
    #: The fields each queued entry's write sets (keys of ``field_key``).
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class Lane:
    """One leased shard's part of a cycle: what it claimed, the attempts counted for
    what it sends, and what it will settle."""

    shard: int
    token: str
    settlement: Settlement
    claim: Claim = field(default_factory=Claim)
    attempts: dict[str, int] = field(default_factory=dict)
    #: The shard's bulk stream (``shard`` is then its stream number): its calls count in
    #: the bulk budget, and its writes lose the fields a newer live write already set.
    bulk: bool = False

    @classmethod
    def of(cls, shard: int, token: str, *, bulk: bool = False) -> Lane:
        return cls(shard, token, Settlement(shard), bulk=bulk)
