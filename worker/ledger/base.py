"""What the ledger reads and writes: stream entries, a fenced claim's result, one
cycle's settlement, and a shard's backlog. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from producers.contract import Outcome, request_id

#: The claim cursor once a cycle has walked the whole pending list.
CLAIMED_ALL = "done"


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A stream entry as read: its id, hashed lead key and JSON payload. ``origin`` is
    the entry id whose request this entry answers too (set by ``leadsync dlq replay``)."""

    entry_id: str
    key_hash: str
    payload: str
    origin: str | None = None
    #: Replayed with --force: fields newer writes set are sent anyway.
    forced: bool = False
    #: The stream number of the original request's id when it is not this stream's: a
    #: letter ``leadsync reshard`` moved to its lead's stream in the new layout answers
    #: the id the app holds, made under the old one.
    request_stream: int | None = None

    @property
    def first_id(self) -> str:
        """The id of the write this entry carries: its origin's when it was replayed."""
        return self.origin or self.entry_id


@dataclass(frozen=True, slots=True)
class Claimed:
    """One fenced read: the entries and where the walk of the pending list stands."""

    entries: list[RawEntry]
    cursor: str
    groups_recreated: bool = False

    @property
    def pending_done(self) -> bool:
        """True once every pending entry was claimed (only then are new ones read)."""
        return self.cursor == CLAIMED_ALL


@dataclass(slots=True)
class Settlement:
    """Everything one cycle decided for its shard, written by :meth:`Ledger.settle` in
    one fenced atomic step: outcomes, acknowledgements, dead letters, refunds."""

    shard: int
    outcomes: list[Outcome] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    dead: list[tuple[RawEntry, str, str, int]] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)
    #: Writes Marketo applied: (lead key hash, the write's id, its fields' keys); the settle
    #: records them for leads with parked writes, so a replay never reverts them.
    written: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    #: The lead key hash of every entry acknowledged (a bulk lane's settle counts them off
    #: its leads' bulk marks).
    settled_keys: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.acks or self.dead or self.refunds)

    def answer(self, entry: RawEntry, outcome: Outcome) -> None:
        """Record ``outcome`` for the entry (and for its original request, when the entry
        was replayed) and acknowledge it."""
        self.outcomes.append(outcome)
        if entry.origin:
            stream = self.shard if entry.request_stream is None else entry.request_stream
            self.outcomes.append(replace(outcome, request_id=request_id(stream, entry.origin)))
        self.acks.append(entry.entry_id)
        self.settled_keys.append(entry.key_hash)

    def park(self, entry: RawEntry, outcome: Outcome, error: str) -> None:
        """Move the entry, with its own payload, to the dead-letter stream."""
        self.answer(entry, outcome)
        self.dead.append((entry, error, outcome.error_code or "", outcome.attempts))

    def wrote(self, entry: RawEntry, fields: Iterable[str]) -> None:
        """Marketo applied ``entry``'s write with these fields (keys of ``field_key``)."""
        names = tuple(fields)
        if entry.key_hash and names:
            self.written.append((entry.key_hash, entry.first_id, names))

    def refund(self, entry_ids: Iterable[str]) -> None:
        """Give back attempts of calls that were refused before they were made."""
        self.refunds.extend(entry_ids)


@dataclass(frozen=True, slots=True)
class ShardBacklog:
    """What a shard holds: entries not yet committed and the age of the oldest.
    ``busy`` is true while a cycle holds the shard or the shard rests after faults."""

    shard: int
    entries: int
    oldest_age_s: float | None
    busy: bool
