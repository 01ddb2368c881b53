"""One drain cycle of one shard: plain async code, no Celery.

lease the shard -> claim pending + read new entries -> coalesce -> for the fullest
batch: count an attempt, take a limiter permit, sign and send (splitting the batch
when a record faults the whole call) -> commit outcomes + XACK + XDEL atomically
-> release the lease. Anything that is not a per-lead answer (throttling, quota,
credentials, transient faults) leaves the entries pending for a later cycle.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from producers.contract import (
    Outcome,
    OutcomeStatus,
    decode_lead,
    encode_lead,
    entry_time_s,
    request_id,
)
from worker import metrics
from worker.batching import Batch, BatchRecord, QueuedLead, entry_order, plan_batches
from worker.client import MarketoClient
from worker.errors import (
    RECORD_FAULT_CODES,
    AuthError,
    BadRequestError,
    CallTimeout,
    InvalidLead,
    LimitReached,
    MarketoError,
    QuotaExceededError,
    ResignError,
    ThrottledError,
    TransientError,
)
from worker.faultpoints import crash_if
from worker.ledger import Committed, Ledger, RawEntry
from worker.limits import Denied, RedisLimiter
from worker.retrying import call_policy
from worker.settings import Settings
from worker.soap.response import SyncResult
from worker.stats import count_outcomes

logger = logging.getLogger(__name__)

DrainStatus = Literal["busy", "idle", "waiting", "sent", "limited", "held", "backoff"]

#: A drain task keeps its shard for at most this many calls, and this long.
BATCHES_PER_DRAIN = 8
DRAIN_BUDGET_S = 10.0

#: How many entries one cycle reads at most, as a multiple of the batch size:
#: merging duplicates can shrink a read, and we fill toward the cap.
READ_FACTOR = 4


@dataclass(slots=True)
class DrainReport:
    """What one cycle did; counts only (it travels into Celery results and Flower)."""

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


class LeaseLost(Exception):
    """The shard lease expired under us; another worker owns the entries now."""


class Drainer:
    """Runs drain cycles for one worker process."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        client: MarketoClient,
        limiter: RedisLimiter,
        settings: Settings,
        consumer: str,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.limiter = limiter
        self.settings = settings
        self.consumer = consumer
        self.keys = ledger.keys
        # Per shard, for the cycle in progress: replayed entry id -> original entry id.
        self._origins: dict[int, dict[str, str]] = {}

    async def drain(self, shard: int) -> DrainReport:
        """Batch cycles of ``shard`` under one lease: while full batches keep going out,
        up to BATCHES_PER_DRAIN of them or DRAIN_BUDGET_S, whichever comes first (so a
        backlog does not pay a task dispatch per call, and other shards get their turn)."""
        report = DrainReport(shard)
        token = await self.ledger.acquire_lease(shard, self.settings.lease_ttl_s)
        if token is None:
            report.status = "busy"
            return report
        started_s = time.monotonic()
        try:
            for _ in range(BATCHES_PER_DRAIN):
                calls_before = report.calls
                await self._cycle(shard, token, report)
                if report.status != "sent" or report.calls == calls_before:
                    break
                if time.monotonic() - started_s > DRAIN_BUDGET_S:
                    break
            if report.calls and report.status in ("idle", "waiting"):
                report.status = "sent"  # the last look found nothing due; earlier ones sent
        except LeaseLost:
            report.status = "busy"
            report.reason = "lease lost"
            logger.warning("shard %d: lease lost mid-cycle; entries stay pending", shard)
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

    # --- the cycle ------------------------------------------------------------------

    async def _cycle(self, shard: int, token: str, report: DrainReport) -> None:
        batch_size = self.settings.batch_size
        queued, invalid = await self._read(shard, batch_size)
        crash_if("after_claim", self.settings.fault_point)
        if invalid:
            await self._commit(
                shard,
                [(entry, self._invalid_outcome(shard, entry, error)) for entry, error in invalid],
                report,
            )
        if not queued:
            report.status = "idle" if not invalid else "sent"
            return
        batch = pick_batch(
            plan_batches(queued, batch_size),
            batch_size,
            self.settings.flush_interval_s,
            time.time(),
        )
        if batch is None:
            report.status = "waiting"  # a partial batch waits for more leads or for its age
            return
        bumped = await self.ledger.bump_attempts(shard, batch.entry_ids)
        attempts = dict(zip(batch.entry_ids, bumped, strict=True))
        batch = await self._dead_letter_exhausted(shard, batch, attempts, report)
        if not batch.records:
            report.status = "sent"
            return
        report.entries += len(batch.entry_ids)
        results: list[RecordResult] = []
        try:
            await self._send_isolating(shard, token, batch, results, report)
            report.status = "sent"
        except LimitReached as exc:
            await self._refund_unanswered(shard, batch, results)
            report.status = "held" if exc.reason == "hold" else "limited"
            report.retry_after_s, report.reason = exc.retry_after_s, exc.reason
        except (ThrottledError, QuotaExceededError, AuthError) as exc:
            await self._refund_unanswered(shard, batch, results)
            report.status, report.reason = await self._apply_cluster_limit(exc)
        except (TransientError, ResignError) as exc:
            # ResignError here means re-signing did not help: a skewed clock, treated as transient.
            report.status, report.reason = "backoff", _reason(exc)
            # After a timeout Marketo may still be applying the call: the shard rests at
            # least one more request timeout, so its keys are not in two calls at once.
            floor_s = self.settings.request_timeout_s if isinstance(exc, CallTimeout) else 0.0
            await self._back_off(shard, floor_s=floor_s)
        finally:
            await self._commit_results(shard, results, attempts, report)

    async def _read(
        self, shard: int, batch_size: int
    ) -> tuple[list[QueuedLead], list[tuple[RawEntry, InvalidLead]]]:
        """Read until the coalesced records fill a batch or the shard has nothing more."""
        queued: list[QueuedLead] = []
        invalid: list[tuple[RawEntry, InvalidLead]] = []
        keys: set[str] = set()
        origins = self._origins[shard] = {}
        seen: set[str] = set()
        for round_number in range(READ_FACTOR):
            raw = await self.ledger.read(
                shard, self.consumer, batch_size, claim_pending=round_number == 0
            )
            origins.update((e.entry_id, e.origin) for e in raw if e.origin)
            for entry in raw:
                if entry.entry_id in seen:
                    continue
                seen.add(entry.entry_id)
                try:
                    lead = decode_lead(entry.payload)
                except InvalidLead as exc:
                    invalid.append((entry, exc))
                    continue
                queued.append(QueuedLead(entry.entry_id, entry.key_hash, lead))
                keys.add(entry.key_hash if lead.dedup else entry.entry_id)
            if len(raw) < batch_size or len(keys) >= batch_size:
                break
        return queued, invalid

    async def _dead_letter_exhausted(
        self, shard: int, batch: Batch, attempts: Mapping[str, int], report: DrainReport
    ) -> Batch:
        """Entries that already rode in LEADSYNC_MAX_ATTEMPTS calls (this one would be one
        more) leave for the dead-letter stream."""
        exhausted = {e for e, n in attempts.items() if n > self.settings.max_attempts}
        if not exhausted:
            return batch
        now = time.time()
        moved = []
        for record in batch.records:
            for entry_id in record.entry_ids:
                if entry_id in exhausted:
                    outcome = Outcome(
                        request_id(shard, entry_id),
                        OutcomeStatus.DEAD_LETTERED,
                        error=f"gave up after {self.settings.max_attempts} attempts",
                        error_code="MAX_ATTEMPTS",
                        attempts=self.settings.max_attempts,
                        enqueued_at=entry_time_s(entry_id),
                        finished_at=now,
                    )
                    raw = RawEntry(entry_id, record.key_hash, _payload(record))
                    moved.append((raw, outcome, outcome.error or ""))
        await self.ledger.dead_letter(shard, moved)
        await self.ledger.commit(shard, self._origin_commits(shard, [(r, o) for r, o, _ in moved]))
        await self._count_outcomes(Counter(o.status.value for _, o, _ in moved))
        report.dead_lettered += len(moved)
        # Merged records ride whole: if any of their entries is exhausted, the rest wait
        # (and get back the attempt just counted for them).
        kept = tuple(r for r in batch.records if not exhausted.intersection(r.entry_ids))
        waiting = [
            e
            for r in batch.records
            if exhausted.intersection(r.entry_ids)
            for e in r.entry_ids
            if e not in exhausted
        ]
        if waiting:
            await self.ledger.refund_attempts(shard, waiting)
        return Batch(batch.dedup, kept)

    async def _send_isolating(
        self, shard: int, token: str, batch: Batch, results: list[RecordResult], report: DrainReport
    ) -> None:
        """Send the batch; when a record faults the whole call, split until it is alone."""
        work: list[tuple[BatchRecord, ...]] = [batch.records]
        while work:
            records = work.pop(0)
            try:
                answers = await self._call(shard, token, records, batch.dedup, report)
            except BadRequestError as exc:
                if exc.code not in RECORD_FAULT_CODES and exc.code is not None:
                    raise TransientError(f"unexpected fault {exc.code}", code=exc.code) from exc
                if len(records) == 1:
                    results.append(
                        RecordResult(
                            records[0],
                            OutcomeStatus.FAILED,
                            error=exc.detail[:500],
                            error_code=str(exc.code) if exc.code else None,
                        )
                    )
                    continue
                middle = len(records) // 2
                work[:0] = [records[:middle], records[middle:]]
                continue
            for record, answer in zip(records, answers, strict=True):
                results.append(
                    RecordResult(
                        record,
                        OutcomeStatus(answer.status.value),
                        lead_id=answer.lead_id,
                        error=answer.error,
                    )
                )

    async def _call(
        self,
        shard: int,
        token: str,
        records: Sequence[BatchRecord],
        dedup: bool,
        report: DrainReport,
    ) -> list[SyncResult]:
        """One logical call with the retry policy; every attempt takes its own permit."""
        policy = call_policy(
            transient_retries=self.settings.transient_retries,
            backoff_initial_s=self.settings.backoff_initial_s,
            backoff_max_s=self.settings.backoff_max_s,
        )
        leads = [record.lead for record in records]
        async for attempt in policy:
            with attempt:
                if not await self.ledger.renew_lease(shard, token, self.settings.lease_ttl_s):
                    raise LeaseLost()
                permit = await self.limiter.acquire(self.consumer, probe=True)
                if isinstance(permit, Denied):
                    raise LimitReached(permit.reason, permit.retry_after_s)
                report.calls += 1
                report.leads_sent += len(leads)
                if attempt.retry_state.attempt_number > 1:
                    metrics.record_retry()
                started_s = time.perf_counter()
                try:
                    answers = await self.client.sync(leads, dedup=dedup)
                except MarketoError as exc:
                    metrics.record_fault(exc)
                    raise
                finally:
                    metrics.record_call(len(leads), time.perf_counter() - started_s)
                    await self.limiter.release(permit)
                crash_if("after_send", self.settings.fault_point)
                if permit.probe:  # a probe went through: the credentials work again
                    await self.limiter.clear_hold()
                return answers
        raise AssertionError("the retry policy re-raises its last error")  # pragma: no cover

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
        redis = self.ledger.redis
        streak_key = self.keys.control(f"backoff-streak:{shard}")
        pipe = redis.pipeline(transaction=False)
        pipe.incr(streak_key)
        pipe.expire(streak_key, 3600)
        streak, _ = await pipe.execute()
        delay_s = min(
            self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** min(int(streak), 16)
        )
        jittered_ms = max(1, int((floor_s + delay_s * (0.5 + random.random() / 2)) * 1000))
        await redis.set(self.keys.control(f"backoff:{shard}"), 1, px=jittered_ms)

    async def _refund_unanswered(
        self, shard: int, batch: Batch, results: Sequence[RecordResult]
    ) -> None:
        answered = {e for r in results for e in r.record.entry_ids}
        await self.ledger.refund_attempts(shard, [e for e in batch.entry_ids if e not in answered])

    # --- commit ------------------------------------------------------------------------

    async def _commit_results(
        self,
        shard: int,
        results: Sequence[RecordResult],
        attempts: Mapping[str, int],
        report: DrainReport,
    ) -> None:
        if not results:
            return
        now = time.time()
        items = []
        for result in results:
            for entry_id in result.record.entry_ids:
                outcome = Outcome(
                    request_id(shard, entry_id),
                    result.status,
                    lead_id=result.lead_id,
                    error=result.error,
                    error_code=result.error_code,
                    attempts=attempts[entry_id],
                    enqueued_at=entry_time_s(entry_id),
                    finished_at=now,
                )
                items.append((RawEntry(entry_id, result.record.key_hash, ""), outcome))
        await self._commit(shard, items, report)
        crash_if("after_commit", self.settings.fault_point)
        if report.status == "sent":
            await self.ledger.redis.delete(self.keys.control(f"backoff-streak:{shard}"))

    async def _commit(
        self, shard: int, items: Sequence[tuple[RawEntry, Outcome]], report: DrainReport
    ) -> None:
        ordered = sorted(items, key=lambda item: entry_order(item[0].entry_id))
        committed = [Committed(e.entry_id, e.key_hash, o) for e, o in ordered]
        await self.ledger.commit(shard, committed + self._origin_commits(shard, ordered))
        report.outcomes.update(o.status.value for _, o in ordered)
        await self._count_outcomes(Counter(o.status.value for _, o in ordered))

    def _origin_commits(
        self, shard: int, items: Sequence[tuple[RawEntry, Outcome]]
    ) -> list[Committed]:
        """A replayed entry answers its original request too (`leadsync dlq replay`). The
        original id left the stream when it was dead-lettered: its XACK and XDEL are no-ops."""
        origins = self._origins.get(shard, {})
        return [
            Committed(
                origin,
                "",
                replace(
                    outcome,
                    request_id=request_id(shard, origin),
                    enqueued_at=entry_time_s(origin),
                ),
            )
            for entry, outcome in items
            if (origin := entry.origin or origins.get(entry.entry_id))
        ]

    async def _count_outcomes(self, counts: Counter[str]) -> None:
        metrics.record_outcomes(counts)
        await count_outcomes(self.ledger.redis, self.keys, counts)

    def _invalid_outcome(self, shard: int, entry: RawEntry, error: InvalidLead) -> Outcome:
        return Outcome(
            request_id(shard, entry.entry_id),
            OutcomeStatus.FAILED,
            error=str(error),
            error_code="INVALID_LEAD",
            enqueued_at=entry_time_s(entry.entry_id),
            finished_at=time.time(),
        )


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


def _reason(exc: MarketoError) -> str:
    return f"{exc.code} {exc.__class__.__name__}" if exc.code else exc.__class__.__name__


def _payload(record: BatchRecord) -> str:
    return encode_lead(record.lead)
