"""The drain's pure decisions: which batch goes now, what one call carries, which
entries are parked for their attempts, and the outcome each entry gets."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace

from producers.contract import (
    Outcome,
    OutcomeStatus,
    entry_order,
    entry_time_s,
    request_id,
)
from worker.core.batching import Batch, BatchRecord, QueuedLead
from worker.core.newer_fields import SUPERSEDED_REASON, set_since
from worker.drain.model import DrainReport, Lane, RecordResult
from worker.errors import BadRequestError, InvalidLead, MarketoError
from worker.ledger import RawEntry


def fill_call(due: Sequence[tuple[Lane, Batch]], batch_size: int) -> list[tuple[Lane, Batch]]:
    """The parts of the next call: the due batch holding the oldest entry first, then
    other shards' due batches of the same dedup kind while they fit (the last one cut to
    fill the call; its other records stay pending). One shard's records never split a
    lead: a lead is one record."""
    ordered = sorted(due, key=lambda item: min(entry_order(e) for e in item[1].entry_ids))
    dedup = ordered[0][1].dedup
    parts: list[tuple[Lane, Batch]] = []
    room = batch_size
    for lane, batch in ordered:
        if batch.dedup is not dedup or room <= 0:
            continue
        part = Batch(dedup, batch.records[:room])
        parts.append((lane, part))
        room -= len(part)
    return parts


def pick_batch(
    batches: Sequence[Batch], batch_size: int, flush_interval_s: float, now_s: float
) -> Batch | None:
    """The call to make now: among full batches and partial ones whose oldest entry has
    waited ``flush_interval_s``, the one holding the oldest entry (so a small dedup=false
    batch is not starved by a stream of full ones). None when nothing is due."""
    due = [
        b
        for b in batches
        if len(b) >= batch_size
        or now_s - min(entry_time_s(e) for e in b.entry_ids) >= flush_interval_s
    ]
    if not due:
        return None
    return min(due, key=lambda b: min(entry_order(e) for e in b.entry_ids))


def record_error(record: BatchRecord, exc: BadRequestError) -> str:
    """The fault as this record's reason: with 20105, only the unknown fields it carries."""
    own = sorted(name for name in record.lead.attributes if name.casefold() in exc.fields)
    if own:
        return f"{exc.code} unknown field{'s' if len(own) > 1 else ''} {', '.join(own)}"[:500]
    return exc.detail[:500]


def reason(exc: MarketoError) -> str:
    return f"{exc.code} {exc.__class__.__name__}" if exc.code else exc.__class__.__name__


def unknown_outcome_reason(exc: MarketoError) -> str:
    """Why a dedup=false record is parked after a call whose outcome is unknown."""
    return _parked_unknown(f"{reason(exc)}: {exc.detail[:200]}")


#: Codes of a write refused for a field the instance lacks (SOAP 20105, REST 1006): no
#: call that carried it applied it, whatever happened to their answers.
NEVER_APPLIED_CODES = frozenset({"20105", "1006"})


def cut_call_reason(exc: BaseException) -> str:
    """Why a dedup=false record is parked after its call was cut once it had left (the
    drain's timeout, a cancellation, an error outside the error tree)."""
    if isinstance(exc, asyncio.CancelledError):
        return _parked_unknown("call cut after it left: drain timeout or shutdown")
    return _parked_unknown(f"call cut after it left: unexpected {exc.__class__.__name__}")


def _parked_unknown(cause: str) -> str:
    return (
        f"outcome unknown ({cause}); Marketo may have created this lead already, and a "
        "resend creates another: look it up before `leadsync dlq replay`"
    )


def park_exhausted(
    lane: Lane, batch: Batch, report: DrainReport, *, max_attempts: int, now_s: float
) -> Batch:
    """Entries that already rode in LEADSYNC_MAX_ATTEMPTS cycles (this one would be one
    more) are parked in the dead-letter stream, each with its own payload."""
    settlement = lane.settlement
    exhausted = {e for e, n in lane.attempts.items() if n > max_attempts}
    if not exhausted:
        return batch
    for entry_id in sorted(exhausted, key=entry_order):
        settle_entry(
            lane,
            entry_id,
            OutcomeStatus.DEAD_LETTERED,
            now_s=now_s,
            attempts=max_attempts,
            error=f"gave up after {max_attempts} attempts",
            error_code="MAX_ATTEMPTS",
        )
        report.dead_lettered += 1
    # Merged records ride whole: if any of their entries is exhausted, the rest wait
    # (and get back the attempt just counted for them). Those of them that rode in an
    # earlier call may have been applied by it (its answer lost or refused): their fields
    # are recorded now, so a replay of the parked older write never reverts them.
    for record in batch.records:
        if exhausted.intersection(record.entry_ids):
            for entry_id in record.entry_ids:
                if entry_id not in exhausted and lane.attempts.get(entry_id, 0) > 1:
                    settlement.wrote(lane.claim.raw[entry_id], lane.claim.fields.get(entry_id, ()))
    kept = tuple(r for r in batch.records if not exhausted.intersection(r.entry_ids))
    settlement.refund(
        e
        for r in batch.records
        if exhausted.intersection(r.entry_ids)
        for e in r.entry_ids
        if e not in exhausted
    )
    return Batch(batch.dedup, kept)


def answer(
    results: Sequence[RecordResult], owner: Mapping[tuple[str, str], Lane], now_s: float
) -> None:
    """Each record's answer as the outcome of every entry it answers for; ``owner`` maps
    each (lead key digest, entry id) of the call to its lane (isolation may answer for a
    record it built from one of the call's writes)."""
    for result in results:
        for entry_id in result.entry_ids:
            lane = owner[(result.record.key_hash, entry_id)]
            settle_entry(
                lane,
                entry_id,
                result.status,
                now_s=now_s,
                attempts=lane.attempts[entry_id],
                lead_id=result.lead_id,
                error=result.error,
                error_code=result.error_code,
            )


def settle_entry(
    lane: Lane,
    entry_id: str,
    status: OutcomeStatus,
    *,
    now_s: float,
    attempts: int,
    lead_id: int | None = None,
    error: str | None = None,
    error_code: str | None = None,
) -> None:
    """The one place a cycle's outcome for an entry is made: parked when DEAD_LETTERED
    (with the entry's own payload), else answered."""
    outcome = Outcome(
        request_id(lane.shard, entry_id),
        status,
        lead_id=lead_id,
        error=error,
        error_code=error_code,
        attempts=attempts,
        finished_at=now_s,
    )
    entry = lane.claim.raw[entry_id]
    fields = lane.claim.fields.get(entry_id, ())  # empty for a dedup=false write
    if status is OutcomeStatus.DEAD_LETTERED:
        lane.settlement.park(entry, outcome, error or "")
        # A parked write may have been applied by a call whose outcome is unknown: an older
        # replayed write of the lead must not send its fields over it (its own replay will).
        lane.settlement.wrote(entry, fields)
        return
    lane.settlement.answer(entry, outcome)
    # Applied now; or refused now, after an earlier call that carried it and whose
    # answer was lost (attempts > 1) may have applied it: either way an older parked
    # write of the lead must not send these fields over it. Not a write refused for a
    # field the instance lacks: every call that carried it was refused it too.
    applied = status in (OutcomeStatus.CREATED, OutcomeStatus.UPDATED)
    if applied or (attempts > 1 and error_code not in NEVER_APPLIED_CODES):
        lane.settlement.wrote(entry, fields)


def drop_superseded_fields(
    queued: Sequence[QueuedLead],
    written: Mapping[str, Mapping[str, str]],
    forced: frozenset[str] = frozenset(),
) -> tuple[list[QueuedLead], list[QueuedLead]]:
    """A replayed write never reverts a field a newer applied write set: its attributes
    that ``written`` (per lead: field key -> id of the newest applied write that set it)
    records as set after the write are dropped (not for ``forced`` entries: replayed with
    --force). Returns the entries to send and the replayed ones left with nothing to send
    (every field they set was set since)."""
    kept: list[QueuedLead] = []
    superseded: list[QueuedLead] = []
    for item in queued:
        since = written.get(item.key_hash)
        if item.origin is None or not since or not item.lead.dedup or item.entry_id in forced:
            kept.append(item)
            continue
        newer = set(set_since(item.lead.attributes, since, item.origin))
        attributes = {n: v for n, v in item.lead.attributes.items() if n not in newer}
        if item.lead.attributes and not attributes:
            superseded.append(item)
        else:
            kept.append(replace(item, lead=replace(item.lead, attributes=attributes)))
    return kept, superseded


def superseded_outcome(shard: int, entry: RawEntry, now_s: float) -> Outcome:
    """A replayed write with nothing left to send: terminal, with the reason."""
    return Outcome(
        request_id(shard, entry.entry_id),
        OutcomeStatus.FAILED,
        error=SUPERSEDED_REASON,
        error_code="SUPERSEDED",
        finished_at=now_s,
    )


def invalid_outcome(shard: int, entry: RawEntry, error: InvalidLead, now_s: float) -> Outcome:
    return Outcome(
        request_id(shard, entry.entry_id),
        OutcomeStatus.FAILED,
        error=str(error),
        error_code="INVALID_LEAD",
        finished_at=now_s,
    )
