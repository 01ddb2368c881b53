"""Drain cycles of one shard: plain async code, no Celery.

A cycle is three fenced ledger steps around pure planning:

claim (check the lease, renew it, claim EVERY pending entry of the shard before reading
new ones) -> plan (coalesce in write order, pick the due batch, park exhausted entries)
-> count attempts -> send (a limiter permit and a lease renewal before each call;
split the batch when a record faults the whole call) -> settle (outcomes, XACK + XDEL,
dead letters and refunds in one atomic step).

A worker whose lease expired (a pause, a slow Redis) has every ledger write refused
(:class:`~worker.errors.LeaseLost`) and drops its cycle; the entries stay pending for
the new holder. Anything that is not a per-lead answer (throttling, quota, credentials,
transient faults) leaves the entries pending for a later cycle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from producers.contract import (
    Outcome,
    OutcomeStatus,
    decode_lead,
    entry_order,
    entry_time_s,
    request_id,
)
from worker.core.batching import Batch, BatchRecord, QueuedLead, plan_batches
from worker.core.isolation import isolation_budget, split_after_fault
from worker.core.retrying import call_policy
from worker.errors import (
    AuthError,
    BadRequestError,
    CallTimeout,
    InvalidLead,
    LeaseLost,
    LimitReached,
    MarketoError,
    QuotaExceededError,
    ResignError,
    ThrottledError,
    TransientError,
)
from worker.faultpoints import crash_if
from worker.ledger import Ledger, RawEntry, Settlement
from worker.limits import Permit, RedisLimiter
from worker.marketo import MarketoApi, SyncResult
from worker.obs import metrics
from worker.obs.stats import count_outcomes
from worker.settings import Settings

logger = logging.getLogger(__name__)

DrainStatus = Literal["busy", "idle", "waiting", "sent", "limited", "held", "backoff"]

#: A drain task keeps its shard for at most this many calls (and LEADSYNC_DRAIN_BUDGET_S).
BATCHES_PER_DRAIN = 8

#: A call waits this long in all, inside the drain, for its evenly spaced limiter turn
#: (one per rate window / rate calls: 0.4 s at the defaults) before leaving the cycle.
SPACING_WAIT_MAX_S = 2.0

#: How many claim rounds one cycle makes at most, each of one batch size: merging
#: duplicates can shrink a read, and we fill toward the cap.
READ_FACTOR = 4

#: Awaited at the points of a cycle where a crash is most interesting (tests pause there).
Checkpoint = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class DrainReport:
    """What one drain (up to BATCHES_PER_DRAIN cycles) did; counts only (it travels into
    Celery results and Flower)."""

    shard: int
    status: DrainStatus = "idle"
    calls: int = 0
    leads_sent: int = 0
    entries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
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


@dataclass(slots=True)
class Claim:
    """What one cycle claimed: decoded leads, undecodable entries, every raw entry."""

    queued: list[QueuedLead] = field(default_factory=list)
    invalid: list[tuple[RawEntry, InvalidLead]] = field(default_factory=list)
    raw: dict[str, RawEntry] = field(default_factory=dict)


@dataclass(slots=True)
class Lane:
    """One leased shard's part of a cycle: what it claimed, the attempts counted for
    what it sends, and what it will settle."""

    shard: int
    token: str
    settlement: Settlement
    claim: Claim = field(default_factory=Claim)
    attempts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, shard: int, token: str) -> Lane:
        return cls(shard, token, Settlement(shard))


class Drainer:
    """Runs drain cycles for one worker process."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        api: MarketoApi,
        limiter: RedisLimiter,
        settings: Settings,
        consumer: str,
        clock: Callable[[], float] = time.time,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.ledger = ledger
        self.api = api
        self.limiter = limiter
        self.settings = settings
        self.consumer = consumer
        self.keys = ledger.keys
        self.clock = clock
        self.checkpoint = checkpoint

    async def drain(self, shard: int) -> DrainReport:
        """Batch cycles of ``shard`` under one lease: while full batches keep going out,
        up to BATCHES_PER_DRAIN of them or LEADSYNC_DRAIN_BUDGET_S, whichever comes first
        (so a backlog does not pay a task dispatch per call, and other shards get their
        turn). The whole drain is bounded by LEADSYNC_DRAIN_TIMEOUT_S: past it the drain
        stops where it is, releases its lease and slot, and its entries stay pending."""
        report = DrainReport(shard)
        token = await self.ledger.acquire_lease(shard, self.settings.lease_ttl_s)
        if token is None:
            report.status = "busy"
            return report
        deadline_s = time.monotonic() + self.settings.drain_budget_s
        try:
            await self._bounded(self._cycles(shard, token, report, deadline_s), report)
        finally:
            await self.ledger.release_lease(shard, token)
        (report.backlog,) = [b.entries for b in await self.ledger.backlogs_of([shard])]
        if report.calls or report.dead_lettered or report.status in ("limited", "held", "backoff"):
            logger.info(
                "shard=%d status=%s calls=%d leads=%d entries=%d outcomes=%s dead_lettered=%d backlog=%d%s",
                shard,
                report.status,
                report.calls,
                report.leads_sent,
                report.entries,
                dict(report.outcomes),
                report.dead_lettered,
                report.backlog,
                f" reason={report.reason}" if report.reason else "",
            )
        return report

    async def _cycles(self, shard: int, token: str, report: DrainReport, deadline_s: float) -> None:
        for _ in range(BATCHES_PER_DRAIN):
            calls_before = report.calls
            await self._cycle([Lane.of(shard, token)], report, deadline_s)
            if report.status != "sent" or report.calls == calls_before:
                break
            if time.monotonic() > deadline_s:
                break
        if report.calls and report.status in ("idle", "waiting"):
            report.status = "sent"  # the last look found nothing due; earlier ones sent

    async def drain_together(self, shards: Sequence[int]) -> DrainReport:
        """One call filled from several shards' partial batches (light traffic over many
        shards fills one call, not one per shard). The call goes when one of them is due
        or together they fill a call; it takes the oldest entries first. Every shard whose records ride in
        the call is leased for the whole cycle, so each key's shard is in one call at a
        time and the last write wins; shards another worker holds are left out."""
        report = DrainReport(shards[0] if shards else -1)
        leased: list[Lane] = []
        for shard in shards:
            token = await self.ledger.acquire_lease(shard, self.settings.lease_ttl_s)
            if token is not None:
                leased.append(Lane.of(shard, token))
        if not leased:
            report.status = "busy"
            return report
        deadline_s = time.monotonic() + self.settings.drain_budget_s
        try:
            await self._bounded(self._cycle(leased, report, deadline_s), report)
        finally:
            for lane in leased:
                await self.ledger.release_lease(lane.shard, lane.token)
        report.backlog = sum(
            b.entries for b in await self.ledger.backlogs_of(lane.shard for lane in leased)
        )
        if report.calls or report.status in ("limited", "held", "backoff"):
            logger.info(
                "shards=%s status=%s calls=%d leads=%d entries=%d outcomes=%s backlog=%d%s",
                ",".join(str(lane.shard) for lane in leased),
                report.status,
                report.calls,
                report.leads_sent,
                report.entries,
                dict(report.outcomes),
                report.backlog,
                f" reason={report.reason}" if report.reason else "",
            )
        return report

    async def _bounded(self, work: Awaitable[None], report: DrainReport) -> None:
        """Run a drain's cycles within LEADSYNC_DRAIN_TIMEOUT_S; a lost lease or the
        timeout ends them, and the entries stay pending (the caller releases leases)."""
        bound = asyncio.timeout(self.settings.drain_timeout_s)
        try:
            async with bound:
                await work
        except LeaseLost as exc:
            report.status, report.reason = "busy", "lease lost"
            metrics.record_lease_lost()
            logger.warning("%s; entries stay pending for the new holder", exc)
        except TimeoutError:
            if not bound.expired():
                raise
            report.status, report.reason = "backoff", "drain timeout"
            metrics.record_drain_timeout()
            logger.error(
                "shard %d: drain stopped after LEADSYNC_DRAIN_TIMEOUT_S=%g s; entries stay pending",
                report.shard,
                self.settings.drain_timeout_s,
            )

    # --- the cycle ------------------------------------------------------------------

    async def _cycle(self, lanes: Sequence[Lane], report: DrainReport, deadline_s: float) -> None:
        try:
            await self._plan_and_send(lanes, report, deadline_s)
        finally:
            # Whatever was decided or answered is written, even when the cycle is cut short
            # (a timeout, a refusal): an answer Marketo gave is never thrown away. A stale
            # holder's settle is refused as a whole, shard by shard.
            lost: LeaseLost | None = None
            for lane in lanes:
                if not lane.settlement:
                    continue
                try:
                    await self.ledger.settle(lane.shard, lane.token, lane.settlement)
                except LeaseLost as exc:
                    lost = exc
                    continue
                await self._count(lane.settlement, report)
            if lost is not None:
                raise lost
        await self._pause_at("after_commit")
        if report.status == "sent" and report.calls:
            for lane in lanes:
                await self.ledger.clear_rest_streak(lane.shard)

    async def _plan_and_send(
        self, lanes: Sequence[Lane], report: DrainReport, deadline_s: float
    ) -> None:
        batch_size = self.settings.batch_size
        for lane in lanes:
            lane.claim = await self._claim(lane.shard, lane.token, batch_size)
        await self._pause_at("after_claim")
        now_s = self.clock()
        due: list[tuple[Lane, Batch]] = []
        riders: list[tuple[Lane, Batch]] = []
        for lane in lanes:
            for entry, error in lane.claim.invalid:
                lane.settlement.answer(entry, self._invalid_outcome(lane.shard, entry, error))
            if lane.claim.queued:
                batches = plan_batches(lane.claim.queued, batch_size)
                batch = pick_batch(batches, batch_size, self.settings.flush_interval_s, now_s)
                if batch is not None:
                    due.append((lane, batch))
                elif len(lanes) > 1:
                    # Not due yet, but a call is going anyway: it rides along.
                    riders.append((lane, pick_batch(batches, batch_size, 0.0, now_s) or batches[0]))
        if due:
            due += riders
        elif riders and sum(len(part) for _, part in fill_call(riders, batch_size)) >= batch_size:
            due = riders  # none is due alone, but together they fill a call: it goes now
        if not due:
            anything = any(lane.claim.queued for lane in lanes)
            invalid = any(lane.claim.invalid for lane in lanes)
            report.status = "waiting" if anything else ("sent" if invalid else "idle")
            return
        parts: list[tuple[Lane, Batch]] = []
        for lane, part in fill_call(due, batch_size):
            bumped = await self.ledger.bump_attempts(lane.shard, lane.token, part.entry_ids)
            lane.attempts = dict(zip(part.entry_ids, bumped, strict=True))
            kept = self._park_exhausted(lane, part, report)
            if kept.records:
                parts.append((lane, kept))
        if not parts:
            report.status = "sent"
            return
        riding = [lane for lane, _ in parts]
        batch = Batch(parts[0][1].dedup, tuple(r for _, part in parts for r in part.records))
        owner = {id(r): lane for lane, part in parts for r in part.records}
        report.entries += len(batch.entry_ids)
        results: list[RecordResult] = []
        try:
            await self._send_isolating(riding, batch, results, report, deadline_s)
            report.status = "sent"
        except LimitReached as exc:
            self._refund_unanswered(parts, results)
            report.status = "held" if exc.reason == "hold" else "limited"
            report.retry_after_s, report.reason = exc.retry_after_s, exc.reason
        except (ThrottledError, QuotaExceededError, AuthError) as exc:
            self._refund_unanswered(parts, results)
            report.status, report.reason = await self._apply_cluster_limit(exc)
        except (TransientError, ResignError) as exc:
            # ResignError here means re-signing did not help: a skewed clock, treated as transient.
            report.status, report.reason = "backoff", _reason(exc)
            # After a timeout Marketo may still be applying the call: the shards rest at
            # least one more request timeout, so their keys are not in two calls at once.
            floor_s = self.settings.request_timeout_s if isinstance(exc, CallTimeout) else 0.0
            for lane in riding:
                await self._back_off(lane.shard, floor_s=floor_s)
        finally:
            self._answer(results, owner)

    def _refund_unanswered(
        self, parts: Sequence[tuple[Lane, Batch]], results: Sequence[RecordResult]
    ) -> None:
        answered = {e for r in results for e in r.record.entry_ids}
        for lane, part in parts:
            lane.settlement.refund(e for e in part.entry_ids if e not in answered)

    async def _claim(self, shard: int, token: str, batch_size: int) -> Claim:
        """Claim rounds until the coalesced records fill a batch or the shard has nothing
        more. Every pending entry is claimed before any new one is read; when more are
        pending than READ_FACTOR rounds hold, no new entry is read this cycle."""
        claim = Claim()
        keys: set[str] = set()
        cursor = "0-0"
        for _ in range(READ_FACTOR):
            claimed = await self.ledger.claim(
                shard,
                token,
                self.consumer,
                count=batch_size,
                lease_ttl_s=self.settings.lease_ttl_s,
                cursor=cursor,
            )
            if claimed.groups_recreated:
                metrics.record_groups_recreated()
            cursor = claimed.cursor
            for entry in claimed.entries:
                if entry.entry_id in claim.raw:
                    continue
                claim.raw[entry.entry_id] = entry
                try:
                    lead = decode_lead(entry.payload)
                except InvalidLead as exc:
                    claim.invalid.append((entry, exc))
                    continue
                claim.queued.append(QueuedLead(entry.entry_id, entry.key_hash, lead, entry.origin))
                keys.add(entry.key_hash if lead.dedup else entry.entry_id)
            if len(claimed.entries) < batch_size or len(keys) >= batch_size:
                break
        return claim

    def _park_exhausted(self, lane: Lane, batch: Batch, report: DrainReport) -> Batch:
        """Entries that already rode in LEADSYNC_MAX_ATTEMPTS cycles (this one would be one
        more) are parked in the dead-letter stream, each with its own payload."""
        shard, raw, settlement = lane.shard, lane.claim.raw, lane.settlement
        exhausted = {e for e, n in lane.attempts.items() if n > self.settings.max_attempts}
        if not exhausted:
            return batch
        now = self.clock()
        for entry_id in sorted(exhausted, key=entry_order):
            outcome = Outcome(
                request_id(shard, entry_id),
                OutcomeStatus.DEAD_LETTERED,
                error=f"gave up after {self.settings.max_attempts} attempts",
                error_code="MAX_ATTEMPTS",
                attempts=self.settings.max_attempts,
                finished_at=now,
            )
            settlement.park(raw[entry_id], outcome, outcome.error or "")
            report.dead_lettered += 1
        # Merged records ride whole: if any of their entries is exhausted, the rest wait
        # (and get back the attempt just counted for them).
        kept = tuple(r for r in batch.records if not exhausted.intersection(r.entry_ids))
        settlement.refund(
            e
            for r in batch.records
            if exhausted.intersection(r.entry_ids)
            for e in r.entry_ids
            if e not in exhausted
        )
        return Batch(batch.dedup, kept)

    async def _send_isolating(
        self,
        lanes: Sequence[Lane],
        batch: Batch,
        results: list[RecordResult],
        report: DrainReport,
        deadline_s: float,
    ) -> None:
        """Send the batch; when a record faults the whole call, fail the records carrying
        the fields 20105 names, or split until the faulting record is alone, within
        :func:`~worker.core.isolation.isolation_budget` extra calls (what is left then is
        dead-lettered). Past the drain budget no further call goes out: the rest stays
        pending."""
        work: list[tuple[BatchRecord, ...]] = [batch.records]
        budget = isolation_budget(len(batch.records))
        # A full batch is the best use of a call; a partial one waits for the quota pace.
        paced = len(batch) < self.settings.batch_size
        calls = 0
        try:
            while work:
                if results and time.monotonic() > deadline_s:
                    return
                records = work.pop(0)
                if calls > budget:
                    results.extend(
                        RecordResult(
                            r,
                            OutcomeStatus.DEAD_LETTERED,
                            error=f"isolation budget of {budget} calls spent; replay to retry",
                            error_code="ISOLATION_BUDGET",
                        )
                        for r in records
                    )
                    continue
                calls += 1
                try:
                    answers = await self._call(lanes, records, batch.dedup, report, paced=paced)
                except BadRequestError as exc:
                    split = split_after_fault(records, exc.fields)
                    results.extend(
                        RecordResult(
                            r,
                            OutcomeStatus.FAILED,
                            error=_record_error(r, exc),
                            error_code=str(exc.code) if exc.code else None,
                        )
                        for r in split.failed
                    )
                    work[:0] = split.next_calls
                    continue
                results.extend(
                    RecordResult(
                        record,
                        OutcomeStatus(answer.status.value),
                        lead_id=answer.lead_id,
                        error=answer.error,
                    )
                    for record, answer in zip(records, answers, strict=True)
                )
        finally:
            metrics.record_isolation_calls(max(0, calls - 1))

    async def _call(
        self,
        lanes: Sequence[Lane],
        records: Sequence[BatchRecord],
        dedup: bool,
        report: DrainReport,
        *,
        paced: bool = False,
    ) -> list[SyncResult]:
        """One logical call with the retry policy; every attempt renews the lease and
        takes its own permit."""
        policy = call_policy(
            transient_retries=self.settings.transient_retries,
            backoff_initial_s=self.settings.backoff_initial_s,
            backoff_max_s=self.settings.backoff_max_s,
        )
        leads = [record.lead for record in records]
        async for attempt in policy:
            with attempt:
                permit = await self._permit(lanes, paced=paced)
                report.calls += 1
                report.leads_sent += len(leads)
                if attempt.retry_state.attempt_number > 1:
                    metrics.record_retry()
                started_s = time.perf_counter()
                try:
                    answers = await self.api.sync(leads, dedup=dedup)
                except MarketoError as exc:
                    metrics.record_fault(exc)
                    raise
                finally:
                    metrics.record_call(len(leads), time.perf_counter() - started_s)
                    await self.limiter.release(permit)
                await self._pause_at("after_send")
                if permit.probe:  # a probe went through: the credentials work again
                    await self.limiter.clear_hold()
                return answers
        raise AssertionError("the retry policy re-raises its last error")  # pragma: no cover

    async def _permit(self, lanes: Sequence[Lane], *, paced: bool) -> Permit:
        """Leave for one call, renewing every lease first. The next evenly spaced turn
        is usually a fraction of a second away: that wait is taken here, with the call
        ready, up to SPACING_WAIT_MAX_S in all. Any other refusal leaves the cycle
        (LimitReached) for the task or the tick to come back later."""
        waited_s = 0.0
        while True:
            for lane in lanes:
                await self.ledger.renew_lease(lane.shard, lane.token, self.settings.lease_ttl_s)
            permit = await self.limiter.acquire(self.consumer, probe=True, paced=paced)
            if isinstance(permit, Permit):
                return permit
            if permit.reason != "rate" or waited_s + permit.retry_after_s > SPACING_WAIT_MAX_S:
                raise LimitReached(permit.reason, permit.retry_after_s)
            waited_s += permit.retry_after_s
            await asyncio.sleep(permit.retry_after_s)

    async def _pause_at(self, point: str) -> None:
        crash_if(point, self.settings.fault_point)
        if self.checkpoint is not None:
            await self.checkpoint(point)

    # --- failures that are not the leads' fault ------------------------------------------

    async def _apply_cluster_limit(self, exc: MarketoError) -> tuple[DrainStatus, str]:
        if isinstance(exc, ThrottledError):
            # Never an instant retry: a floor of the full cooldown plus jitter.
            await self.limiter.cooldown(
                self.settings.throttle_cooldown_s * (1 + random.random() / 4), _reason(exc)
            )
            return "limited", _reason(exc)
        if isinstance(exc, QuotaExceededError):
            await self.limiter.pause_until_quota_reset()
            return "limited", _reason(exc)
        await self.limiter.hold(_reason(exc))
        logger.error(
            "pipeline on hold: Marketo refused the credentials (%s); leads stay pending",
            _reason(exc),
        )
        return "held", _reason(exc)

    async def _back_off(self, shard: int, *, floor_s: float = 0.0) -> None:
        """Transient faults outlasted the in-cycle retries: this shard rests a while,
        exponentially longer with each failed cycle in a row (capped, with jitter)."""
        streak = await self.ledger.rest_streak(shard)
        delay_s = min(
            self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** min(streak, 16)
        )
        await self.ledger.rest(shard, floor_s + delay_s * (0.5 + random.random() / 2), self.clock())

    # --- settling ----------------------------------------------------------------------

    def _answer(self, results: Sequence[RecordResult], owner: Mapping[int, Lane]) -> None:
        now = self.clock()
        for result in results:
            lane = owner[id(result.record)]
            shard, attempts, raw, settlement = (
                lane.shard,
                lane.attempts,
                lane.claim.raw,
                lane.settlement,
            )
            for entry_id in result.record.entry_ids:
                outcome = Outcome(
                    request_id(shard, entry_id),
                    result.status,
                    lead_id=result.lead_id,
                    error=result.error,
                    error_code=result.error_code,
                    attempts=attempts[entry_id],
                    finished_at=now,
                )
                if result.status is OutcomeStatus.DEAD_LETTERED:
                    settlement.park(raw[entry_id], outcome, result.error or "")
                else:
                    settlement.answer(raw[entry_id], outcome)

    async def _count(self, settlement: Settlement, report: DrainReport) -> None:
        """Count the settled entries' outcomes (a replayed entry's original request
        is the same upsert: it is not counted twice)."""
        acked = {request_id(settlement.shard, e) for e in settlement.acks}
        counts = Counter(o.status.value for o in settlement.outcomes if o.request_id in acked)
        report.outcomes.update(counts)
        metrics.record_outcomes(counts)
        await count_outcomes(self.ledger.redis, self.keys, counts)

    def _invalid_outcome(self, shard: int, entry: RawEntry, error: InvalidLead) -> Outcome:
        return Outcome(
            request_id(shard, entry.entry_id),
            OutcomeStatus.FAILED,
            error=str(error),
            error_code="INVALID_LEAD",
            finished_at=self.clock(),
        )


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


def _record_error(record: BatchRecord, exc: BadRequestError) -> str:
    """The fault as this record's reason: with 20105, only the unknown fields it carries."""
    own = sorted(name for name in record.lead.attributes if name.casefold() in exc.fields)
    if own:
        return f"{exc.code} unknown field{'s' if len(own) > 1 else ''} {', '.join(own)}"[:500]
    return exc.detail[:500]


def _reason(exc: MarketoError) -> str:
    return f"{exc.code} {exc.__class__.__name__}" if exc.code else exc.__class__.__name__
