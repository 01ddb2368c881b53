"""Sending one call's records: a limiter permit (waiting for the evenly spaced turn),
the retry policy, the Marketo API, and isolation when a record faults the whole call.
Failures that are the cluster's business (throttling, quota, credentials) set the
shared limits."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from producers.contract import OutcomeStatus
from worker.core.batching import Batch, BatchRecord
from worker.core.isolation import (
    Writes,
    guilty_entries,
    isolation_budget,
    peel_newest,
    split_after_fault,
)
from worker.core.retrying import call_policy
from worker.drain.choice import cut_call_reason, reason, record_error, unknown_outcome_reason
from worker.drain.model import DrainReport, DrainStatus, Lane, RecordResult
from worker.errors import (
    BadRequestError,
    LeaseLost,
    LimitReached,
    MarketoError,
    OutcomeUnknown,
    QuotaExceededError,
    ThrottledError,
)
from worker.ledger import Ledger
from worker.limits import WINDOW_MARGIN_S, Permit, RedisLimiter
from worker.marketo import MarketoApi, SyncResult
from worker.obs import metrics
from worker.settings import Settings

logger = logging.getLogger(__name__)

#: The fence wants the lease to outlast the call, the settle's Redis step and this.
FENCE_MARGIN_S = 1.0
#: Getting the API ready (normally one Redis GET) took longer than this: the turn is stale.
#: Half the margin a grant keeps past the window, so body building keeps the other half.
STALE_TURN_S = WINDOW_MARGIN_S / 2


class Caller:
    """Makes the calls of one drain cycle for one worker process."""

    def __init__(
        self,
        *,
        api: MarketoApi,
        limiter: RedisLimiter,
        ledger: Ledger,
        settings: Settings,
        consumer: str,
        pause_at: Callable[[str], Awaitable[None]],
    ) -> None:
        self.api = api
        self.limiter = limiter
        self.ledger = ledger
        self.settings = settings
        self.consumer = consumer
        self._pause_at = pause_at
        #: A request left and its outcome is not known (maybe applied): the drain rests
        #: its shards before their lease goes.
        self.unanswered = False
        #: The last call's permit (a 20015 marks the quota day it was granted in).
        self.last_permit: Permit | None = None
        self._renewed_at_s = 0.0

    async def send_isolating(
        self,
        lanes: Sequence[Lane],
        batch: Batch,
        results: list[RecordResult],
        report: DrainReport,
        deadline_s: float,
        writes: Writes | None = None,
    ) -> None:
        """Send the batch; when a record faults the whole call, fail the records carrying
        the fields 20105 names (of a record merging a lead's writes, only the writes that
        set such a field: ``writes`` holds each entry's own write; the others stay
        pending), or split until the faulting record is alone, within
        :func:`~worker.core.isolation.isolation_budget` extra calls. Records not yet proven
        either way when the budget or the drain budget is spent get no result here: they
        stay pending for a later cycle, and the drain gives their attempts back (a
        neighbour's fault never spends them)."""
        work: list[tuple[BatchRecord, ...]] = [batch.records]
        budget = isolation_budget(len(batch.records))
        # A full batch is the best use of a call; a partial one waits for the quota pace.
        paced = len(batch) < self.settings.batch_size
        calls = 0
        try:
            while work:
                if results and time.monotonic() > deadline_s:
                    return
                if calls > budget:
                    left = sum(len(records) for records in work)
                    logger.info(
                        "isolation spent its %d calls; %d records not yet proven either way "
                        "stay pending for the next cycle",
                        budget,
                        left,
                    )
                    return
                records = work.pop(0)
                calls += 1
                try:
                    answers = await self._call(lanes, records, batch.dedup, report, paced=paced)
                except OutcomeUnknown as exc:
                    _park_duplicates(batch, records, results, unknown_outcome_reason(exc))
                    raise
                except BadRequestError as exc:
                    split = split_after_fault(records, exc.fields, exc.named_text, writes)
                    results.extend(
                        RecordResult(
                            r,
                            OutcomeStatus.FAILED,
                            error=record_error(r, exc),
                            error_code=str(exc.code) if exc.code else None,
                            only=guilty_entries(r, split.names, writes or {}),
                        )
                        for r in split.failed
                    )
                    work[:0] = split.next_calls
                    continue
                except BaseException as exc:
                    # Cut after the bytes left (the drain's timeout, a cancellation, an
                    # error outside the tree): as unknown an outcome as a timeout.
                    if self.unanswered:
                        _park_duplicates(batch, records, results, cut_call_reason(exc))
                    raise
                peeled: list[BatchRecord] = []
                for record, answer in zip(records, answers, strict=True):
                    rest = peel_newest(record, writes) if answer.status == "FAILED" else None
                    if rest is not None:
                        peeled.append(rest)
                        continue
                    results.append(
                        RecordResult(
                            record,
                            OutcomeStatus(answer.status.value),
                            lead_id=answer.lead_id,
                            error=answer.error,
                            error_code=answer.error_code,
                        )
                    )
                if peeled:
                    work.append(tuple(peeled))
        finally:
            report.isolation_calls += max(0, calls - 1)
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
        takes its own permit. The call is built before any permit (a body too large for
        Marketo costs none), and leaves only through the fence."""
        policy = call_policy(
            transient_retries=self.settings.transient_retries,
            backoff_initial_s=self.settings.backoff_initial_s,
            backoff_max_s=self.settings.backoff_max_s,
        )
        call = self.api.prepare([record.lead for record in records], dedup=dedup)
        if not call.sent:  # every lead answered without a call
            return call.merge([])
        async for attempt in policy:
            with attempt:
                permit, credential = await self._permit(lanes, paced=paced)
                self.last_permit = permit
                left = False
                try:
                    # The window counts the call from now, when it leaves, not from its
                    # grant: Marketo counts it when it arrives.
                    await self.limiter.depart(permit)
                except BaseException:
                    await _quietly(self.limiter.give_back(permit))
                    raise

                def fence() -> None:
                    nonlocal left
                    self._check_fence(lanes)
                    left = True

                started_s = time.perf_counter()
                self.unanswered = True
                try:
                    answers = await self.api.send(call, credential=credential, fence=fence)
                except LeaseLost:
                    self.unanswered = False
                    if not left:
                        await self.limiter.give_back(permit)
                    raise
                except OutcomeUnknown as exc:
                    # Marketo may still be running it: the slot stays taken, and
                    # ``unanswered`` stays set until the drain has rested the shards.
                    metrics.record_fault(exc)
                    metrics.record_unknown_outcome()
                    await self.limiter.keep_slot(permit, self.settings.unknown_outcome_rest_s)
                    raise
                except MarketoError as exc:
                    self.unanswered = False
                    metrics.record_fault(exc)
                    await self.limiter.release(permit)
                    raise
                except BaseException:
                    # Cancelled (the drain's timeout, a shutdown) with the call maybe on
                    # the wire: keep the slot as for an unknown outcome.
                    if left:
                        await _quietly(
                            self.limiter.keep_slot(permit, self.settings.unknown_outcome_rest_s)
                        )
                    else:
                        self.unanswered = False
                        await _quietly(self.limiter.give_back(permit))
                    raise
                finally:
                    if left:
                        report.calls += 1
                        report.leads_sent += len(call.sent)
                        if attempt.retry_state.attempt_number > 1:
                            metrics.record_retry()
                        metrics.record_call(len(call.sent), time.perf_counter() - started_s)
                self.unanswered = False
                await self.limiter.release(permit)
                await self._pause_at("after_send")
                if permit.probe:  # a probe went through: the credentials work again
                    await self.limiter.clear_hold()
                return answers
        raise AssertionError("the retry policy re-raises its last error")  # pragma: no cover

    def _check_fence(self, lanes: Sequence[Lane]) -> None:
        """Right before the bytes leave: the leases, from their last renewal, must outlast
        the call and the settle after it. A pause since then (a GC, a frozen VM, a slow
        token) could have let the lease lapse and another worker send a newer value for
        the same keys; then this call must not leave (LeaseLost: the turn is given back,
        the entries stay pending for the holder)."""
        elapsed_s = time.monotonic() - self._renewed_at_s
        needed_s = (
            self.settings.request_timeout_s + self.settings.redis_socket_timeout_s + FENCE_MARGIN_S
        )
        if elapsed_s + needed_s > self.settings.lease_ttl_s:
            metrics.record_fence_refusal()
            logger.warning(
                "send refused: %.1f s since the lease renewal, the lease would not outlast "
                "the call; entries stay pending",
                elapsed_s,
            )
            raise LeaseLost(lanes[0].shard, "send")

    async def _permit(self, lanes: Sequence[Lane], *, paced: bool) -> tuple[Permit, str]:
        """Leave for one call with the API ready to send it at once, and the credential
        the call goes with.

        The limiter stamps a grant when it is taken and Marketo counts a call when it
        arrives, so a call must leave right after its turn. When the API was slow to get
        ready (REST waiting out a dying token: every process that wanted the token waited
        with it), the turn is given back and a fresh one taken: those calls then go out
        spaced again instead of together, a burst past Marketo's window (a 606). A turn
        whose call never left is given back (window entry, quota count, slot). A probe
        keeps its turn: it is one call, and a retake could wait a whole hold interval
        (the fence still refuses it if the lease would not outlast it)."""
        while True:
            permit = await self._turn(lanes, paced=paced)
            started_s = time.monotonic()
            try:
                credential = await self.api.ready()
            except BaseException:
                await self.limiter.give_back(permit)
                raise
            if permit.probe or time.monotonic() - started_s <= STALE_TURN_S:
                return permit, credential
            await self.limiter.give_back(permit)
            metrics.record_stale_turn()

    async def _turn(self, lanes: Sequence[Lane], *, paced: bool) -> Permit:
        """A permit, renewing every lease first. The next evenly spaced turn
        is usually a fraction of a second away: that wait is taken here, with the call
        ready, up to self.settings.spacing_wait_max_s in all. Any other refusal leaves the cycle
        (LimitReached) for the task or the tick to come back later."""
        waited_s = 0.0
        while True:
            # Taken before the renewals: the fence measures the lease conservatively.
            self._renewed_at_s = time.monotonic()
            for lane in lanes:
                await self.ledger.renew_lease(lane.shard, lane.token, self.settings.lease_ttl_s)
            permit = await self.limiter.acquire(
                self.consumer, probe=True, paced=paced, bulk=any(lane.bulk for lane in lanes)
            )
            if isinstance(permit, Permit):
                return permit
            if (
                permit.reason != "rate"
                or waited_s + permit.retry_after_s > self.settings.spacing_wait_max_s
            ):
                metrics.record_limiter_refusal(permit.reason)
                raise LimitReached(permit.reason, permit.retry_after_s)
            waited_s += permit.retry_after_s
            await asyncio.sleep(permit.retry_after_s)

    async def apply_cluster_limit(self, exc: MarketoError) -> tuple[DrainStatus, str]:
        if isinstance(exc, ThrottledError):
            # Never an instant retry: a floor of the full cooldown plus jitter.
            await self.limiter.cooldown(
                self.settings.throttle_cooldown_s * (1 + random.random() / 4), reason(exc)
            )
            return "limited", reason(exc)
        if isinstance(exc, QuotaExceededError):
            # The day the refused call was granted in, not the day its answer came in.
            await self.limiter.pause_until_quota_reset(self.last_permit)
            return "limited", reason(exc)
        await self.limiter.hold(reason(exc))
        logger.error(
            "pipeline on hold: Marketo refused the credentials (%s); leads stay pending",
            reason(exc),
        )
        return "held", reason(exc)


def _park_duplicates(
    batch: Batch, records: Sequence[BatchRecord], results: list[RecordResult], why: str
) -> None:
    """A call whose outcome is unknown: its dedup=false records are parked, since each
    resend of a createDuplicate record creates one more lead."""
    if batch.dedup:
        return
    results.extend(
        RecordResult(r, OutcomeStatus.DEAD_LETTERED, error=why, error_code="OUTCOME_UNKNOWN")
        for r in records
    )


async def _quietly(step: Awaitable[None]) -> None:
    """A best-effort limiter step on the way out of a cancelled call."""
    try:
        await step
    except Exception:
        logger.warning("could not record a cancelled call's slot", exc_info=True)
