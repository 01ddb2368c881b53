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
from collections.abc import Awaitable, Callable, Sequence

from producers.contract import (
    decode_lead,
    request_id,
)
from worker.core.batching import Batch, QueuedLead, plan_batches
from worker.core.fields import field_key
from worker.drain.calls import Caller
from worker.drain.choice import (
    answer,
    drop_superseded_fields,
    fill_call,
    invalid_outcome,
    park_exhausted,
    pick_batch,
    reason,
    superseded_outcome,
)
from worker.drain.model import Checkpoint, Claim, DrainReport, Lane, RecordResult
from worker.errors import (
    AuthError,
    InvalidLead,
    LeaseLost,
    LimitReached,
    OutcomeUnknown,
    QuotaExceededError,
    ResignError,
    ThrottledError,
    TransientError,
    TransportError,
)
from worker.faultpoints import crash_if
from worker.ledger import Ledger, Settlement
from worker.limits import RedisLimiter
from worker.marketo import MarketoApi
from worker.obs import metrics
from worker.obs.stats import count_outcomes
from worker.settings import Settings

logger = logging.getLogger(__name__)


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
        self._caller = Caller(
            api=api,
            limiter=limiter,
            ledger=ledger,
            settings=settings,
            consumer=consumer,
            pause_at=self._pause_at,
        )

    @property
    def _release_patience_s(self) -> float:
        """How long a drain keeps asking an unanswering Redis to take its lease back
        (through a failover): half the lease's TTL, so it never waits longer than the
        lease would have held the shard anyway."""
        return self.settings.lease_ttl_s / 2

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
            await self._bounded(self._cycles(shard, token, report, deadline_s), report, [shard])
        finally:
            await self.ledger.release_lease(shard, token, patience_s=self._release_patience_s)
        (report.backlog,) = [b.entries for b in await self.ledger.backlogs_of([shard])]
        if report.calls or report.dead_lettered or report.status in ("limited", "held", "backoff"):
            logger.info(
                "shard=%d status=%s calls=%d isolation_calls=%d leads=%d entries=%d outcomes=%s "
                "dead_lettered=%d backlog=%d%s",
                shard,
                report.status,
                report.calls,
                report.isolation_calls,
                report.leads_sent,
                report.entries,
                dict(report.outcomes),
                report.dead_lettered,
                report.backlog,
                f" reason={report.reason}" if report.reason else "",
            )
        return report

    async def _cycles(self, shard: int, token: str, report: DrainReport, deadline_s: float) -> None:
        for _ in range(self.settings.batches_per_drain):
            calls_before = report.calls
            lane = Lane.of(shard, token, bulk=self.ledger.is_bulk(shard))
            await self._cycle([lane], report, deadline_s)
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
            await self._bounded(
                self._cycle(leased, report, deadline_s),
                report,
                [lane.shard for lane in leased],
            )
        finally:
            for lane in leased:
                await self.ledger.release_lease(
                    lane.shard, lane.token, patience_s=self._release_patience_s
                )
        report.backlog = sum(
            b.entries for b in await self.ledger.backlogs_of(lane.shard for lane in leased)
        )
        if report.calls or report.status in ("limited", "held", "backoff"):
            logger.info(
                "shards=%s status=%s calls=%d isolation_calls=%d leads=%d entries=%d outcomes=%s "
                "backlog=%d%s",
                ",".join(str(lane.shard) for lane in leased),
                report.status,
                report.calls,
                report.isolation_calls,
                report.leads_sent,
                report.entries,
                dict(report.outcomes),
                report.backlog,
                f" reason={report.reason}" if report.reason else "",
            )
        return report

    async def _bounded(
        self, work: Awaitable[None], report: DrainReport, shards: Sequence[int]
    ) -> None:
        """Run a drain's cycles within LEADSYNC_DRAIN_TIMEOUT_S; a lost lease or the
        timeout ends them, and the entries stay pending (the caller releases leases).
        Whenever a call was left on the wire (the timeout or a cancellation cut it, or its
        outcome is unknown), the shards rest before their leases go, so no sender takes
        them while Marketo may still apply it. An error outside the error tree ends the
        drain with a rest too, instead of escaping with none."""
        self._caller.unanswered = False
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
        except asyncio.CancelledError:
            await self._rest_if_unanswered(shards)
            raise
        except Exception as exc:
            report.status, report.reason = "backoff", f"unexpected {exc.__class__.__name__}"
            logger.exception("shard %d: drain failed; entries stay pending", report.shard)
            for shard in shards:
                await self._back_off(shard)
        await self._rest_if_unanswered(shards)

    async def _rest_if_unanswered(self, shards: Sequence[int]) -> None:
        """A call of this drain may still be running in Marketo: its shards rest."""
        if not self._caller.unanswered:
            return
        self._caller.unanswered = False
        for shard in shards:
            try:
                await self.ledger.rest(shard, self.settings.unknown_outcome_rest_s)
            except Exception:
                logger.exception("shard %d: could not set the rest after an unanswered call", shard)

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
            lane.claim = await self._claim(lane.shard, lane.token, batch_size, bulk=lane.bulk)
        await self._pause_at("after_claim")
        now_s = self.clock()
        due: list[tuple[Lane, Batch]] = []
        riders: list[tuple[Lane, Batch]] = []
        for lane in lanes:
            for entry, error in lane.claim.invalid:
                lane.settlement.answer(
                    entry, invalid_outcome(lane.shard, entry, error, self.clock())
                )
            for entry in lane.claim.superseded:
                lane.settlement.answer(entry, superseded_outcome(lane.shard, entry, self.clock()))
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
            invalid = any(lane.claim.invalid or lane.claim.superseded for lane in lanes)
            report.status = "waiting" if anything else ("sent" if invalid else "idle")
            return
        parts: list[tuple[Lane, Batch]] = []
        for lane, part in fill_call(due, batch_size):
            bumped = await self.ledger.bump_attempts(lane.shard, lane.token, part.entry_ids)
            lane.attempts = dict(zip(part.entry_ids, bumped, strict=True))
            kept = park_exhausted(
                lane, part, report, max_attempts=self.settings.max_attempts, now_s=self.clock()
            )
            if kept.records:
                parts.append((lane, kept))
        if not parts:
            report.status = "sent"
            return
        riding = [lane for lane, _ in parts]
        batch = Batch(parts[0][1].dedup, tuple(r for _, part in parts for r in part.records))
        # Two shards may give one id to two entries; a lead's key lives in one shard, whose
        # two streams (live and bulk) draw their ids from one sequence.
        owner = {
            (r.key_hash, e): lane for lane, part in parts for r in part.records for e in r.entry_ids
        }
        report.entries += len(batch.entry_ids)
        results: list[RecordResult] = []
        try:
            writes = {
                (q.key_hash, q.entry_id): q.lead for lane in riding for q in lane.claim.queued
            }
            await self._caller.send_isolating(
                riding, batch, results, report, deadline_s, writes=writes
            )
            report.status = "sent"
            # Records isolation left unproven stay pending, their attempts given back.
            self._refund_unanswered(parts, results)
        except LimitReached as exc:
            self._refund_unanswered(parts, results)
            report.status = "held" if exc.reason == "hold" else "limited"
            report.retry_after_s, report.reason = exc.retry_after_s, exc.reason
        except (ThrottledError, QuotaExceededError, AuthError) as exc:
            self._refund_unanswered(parts, results)
            report.status, report.reason = await self._caller.apply_cluster_limit(exc)
        except (TransientError, OutcomeUnknown, ResignError) as exc:
            # ResignError here means re-signing did not help: a skewed clock, treated as transient.
            report.status, report.reason = "backoff", reason(exc)
            if isinstance(exc, TransportError):
                # The request never reached Marketo (refused, DNS, TLS, connect timeout): no
                # record was tried, so none spends an attempt. An outage then keeps the
                # leads pending (the shards back off) instead of parking them all after
                # LEADSYNC_MAX_ATTEMPTS cycles for an operator to replay.
                self._refund_unanswered(parts, results)
            # When the outcome is unknown Marketo may still be applying the call: the
            # shards rest at least LEADSYNC_UNKNOWN_OUTCOME_REST_S (on Redis's clock, and
            # every lease is refused meanwhile), so their keys are not in two calls at once.
            unknown = isinstance(exc, OutcomeUnknown)
            floor_s = self.settings.unknown_outcome_rest_s if unknown else 0.0
            for lane in riding:
                await self._back_off(lane.shard, floor_s=floor_s)
            if unknown:
                self._caller.unanswered = False
        finally:
            answer(results, owner, self.clock())

    def _refund_unanswered(
        self, parts: Sequence[tuple[Lane, Batch]], results: Sequence[RecordResult]
    ) -> None:
        answered = {e for r in results for e in r.entry_ids}
        for lane, part in parts:
            lane.settlement.refund(e for e in part.entry_ids if e not in answered)

    async def _claim(self, shard: int, token: str, batch_size: int, *, bulk: bool = False) -> Claim:
        """Claim rounds until the coalesced records fill a batch or the shard has nothing
        more. Every pending entry is claimed before any new one is read; when more are
        pending than READ_FACTOR rounds hold, no new entry is read this cycle.

        A bulk write is its own origin: like a replayed write, it loses the fields a newer
        live write of its lead already set (the ids of both lanes are one sequence)."""
        claim = Claim()
        keys: set[str] = set()
        cursor = "0-0"
        for _ in range(self.settings.claim_rounds):
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
                origin = entry.origin or (entry.entry_id if bulk else None)
                claim.queued.append(QueuedLead(entry.entry_id, entry.key_hash, lead, origin))
                if lead.dedup:  # a createDuplicate write is another lead: it sets no field here
                    claim.fields[entry.entry_id] = tuple(field_key(n) for n in lead.attributes)
                keys.add(entry.key_hash if lead.dedup else entry.entry_id)
            # The pending list is walked whole first: its entries may have been sent (a
            # call whose answer was lost), and a lead's older pending write must never go
            # out without its newer pending one. It holds at most what one claim took
            # (new entries are read only once it is walked), so the rounds suffice.
            if claimed.pending_done and (
                len(claimed.entries) < batch_size or len(keys) >= batch_size
            ):
                break
        await self._keep_newer_fields(shard, claim)
        return claim

    async def _keep_newer_fields(self, shard: int, claim: Claim) -> None:
        """Replayed writes lose the fields a newer applied write set (recorded by the settle
        while their lead had parked writes); one left with nothing is answered as
        superseded, without a call."""
        replayed = [item for item in claim.queued if item.origin is not None]
        if not replayed:
            return
        written = await self.ledger.written_fields(shard, (item.key_hash for item in replayed))
        forced = frozenset(e for e, raw in claim.raw.items() if raw.forced)
        claim.queued, superseded = drop_superseded_fields(claim.queued, written, forced)
        for item in claim.queued:
            if item.lead.dedup:
                claim.fields[item.entry_id] = tuple(field_key(n) for n in item.lead.attributes)
        claim.superseded.extend(claim.raw[item.entry_id] for item in superseded)

    async def _pause_at(self, point: str) -> None:
        crash_if(point, self.settings.fault_point)
        if self.checkpoint is not None:
            await self.checkpoint(point)

    # --- failures that are not the leads' fault ------------------------------------------

    async def _back_off(self, shard: int, *, floor_s: float = 0.0) -> None:
        """Transient faults outlasted the in-cycle retries: this shard rests a while,
        exponentially longer with each failed cycle in a row (capped, with jitter)."""
        streak = await self.ledger.rest_streak(shard)
        delay_s = min(
            self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** min(streak, 16)
        )
        await self.ledger.rest(shard, floor_s + delay_s * (0.5 + random.random() / 2))

    # --- settling ----------------------------------------------------------------------

    async def _count(self, settlement: Settlement, report: DrainReport) -> None:
        """Count the settled entries' outcomes (a replayed entry's original request
        is the same upsert: it is not counted twice)."""
        acked = {request_id(settlement.shard, e) for e in settlement.acks}
        counts = Counter(o.status.value for o in settlement.outcomes if o.request_id in acked)
        report.outcomes.update(counts)
        metrics.record_outcomes(counts)
        await count_outcomes(self.ledger.redis, self.keys, counts)
