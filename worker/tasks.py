"""Celery tasks: ``drain(shard)`` runs one batch cycle; ``tick`` (every second, from
beat) rings drains for shards with work due; ``refresh_fields`` (from beat, and once at
worker start) learns the instance's lead fields. Task args are the shard number only and
results are counts, so Flower and the broker never see lead data."""

from __future__ import annotations

import logging
import random
from typing import Any

from worker.app import QUEUE, app, settings
from worker.marketo.describe import describer_for
from worker.obs.metrics import (
    observe_backlogs,
    observe_bulk,
    observe_limiter,
    observe_pace,
    observe_tick,
)
from worker.ops import fields
from worker.ops.health import write_heartbeat
from worker.runtime import Runtime, get_runtime
from worker.scheduling import bulk_drains, call_groups, pace_report

logger = logging.getLogger(__name__)

#: Consumer names of processes gone this long (and holding nothing) are removed, at most
#: once per PRUNE_EVERY_MS across the cluster.
CONSUMER_IDLE_S = 3600.0
PRUNE_EVERY_MS = 600_000
#: A worker that starts with no fields stored tries this many times more when its
#: refresh was refused, failed or found another one running, waiting longer each time.
FIELDS_START_RETRIES = 5
FIELDS_RETRY_S = 30.0


def _ring(runtime: Runtime, groups: list[list[int]], *, countdown_s: float = 0.0) -> int:
    """Queue a drain for each group of shards not already rung (one shard: ``drain``;
    several: ``drain_together``, one call filled from all of them); return how many
    drains were queued."""
    # A ring marker stops the tick from queueing the same shard again while a drain
    # message waits for a free worker; it expires so a lost message is rung again.
    marker_ms = int((settings.ring_ttl_s + countdown_s) * 1000)
    shards = [shard for group in groups for shard in group]

    async def claim() -> set[int]:
        pipe = runtime.redis.pipeline(transaction=False)
        for shard in shards:
            pipe.set(runtime.keys.ring(shard), 1, nx=True, px=marker_ms)
        return {shard for shard, ok in zip(shards, await pipe.execute(), strict=True) if ok}

    rung = runtime.run(claim()) if shards else set()
    queued = 0
    for group in groups:
        members = [shard for shard in group if shard in rung]
        if len(members) == 1:
            drain.apply_async((members[0],), queue=QUEUE, countdown=countdown_s or None)
        elif members:
            drain_together.apply_async((members,), queue=QUEUE, countdown=countdown_s or None)
        queued += bool(members)
    return queued


@app.task(name="leadsync.drain", acks_late=True, reject_on_worker_lost=True)
def drain(shard: int) -> dict[str, Any]:
    """One batch cycle of one shard; rings itself again while a backlog remains."""
    runtime = get_runtime(settings)
    runtime.run(runtime.redis.delete(runtime.keys.ring(shard)))
    runtime.run(write_heartbeat(runtime.redis, runtime.keys))
    report = runtime.run(runtime.drainer.drain(shard))
    if report.status == "sent" and report.backlog > 0:
        _ring(runtime, [[shard]])
    elif (
        report.status == "limited"
        and report.reason in ("rate", "concurrency")
        and report.retry_after_s is not None
        and report.retry_after_s <= settings.self_retry_max_s
    ):
        # A little jitter so shards refused together do not all return in one instant.
        _ring(runtime, [[shard]], countdown_s=report.retry_after_s + random.uniform(0.0, 0.05))
    return report.as_dict()


@app.task(name="leadsync.drain_together", acks_late=True, reject_on_worker_lost=True)
def drain_together(shards: list[int]) -> dict[str, Any]:
    """One call filled from the partial batches of several shards (all leased)."""
    runtime = get_runtime(settings)
    runtime.run(runtime.redis.delete(*(runtime.keys.ring(s) for s in shards)))
    runtime.run(write_heartbeat(runtime.redis, runtime.keys))
    return runtime.run(runtime.drainer.drain_together(shards)).as_dict()


@app.task(name="leadsync.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """Ring drains for shards with work due and no live lease. Two ticks at once are
    harmless: the ring markers and leases let only one drain per shard through."""
    runtime = get_runtime(settings)

    async def decide() -> list[list[int]]:
        # A reshard's count is followed here, every tick; while its freeze waits for the
        # streams to empty (intake refused), partial calls go without the flush wait.
        phase = await runtime.ledger.follow_shards()
        flush_interval_s = 0.0 if phase == "freeze" else settings.flush_interval_s
        shards = runtime.shards
        # Live streams 0..shards-1 and bulk streams shards..2*shards-1, in one round trip.
        streams = await runtime.ledger.backlogs(2 * shards)
        backlogs, bulk = streams[:shards], streams[shards:]
        state = await runtime.limiter.state()
        observe_backlogs(backlogs)
        observe_limiter(state)
        pace = pace_report(
            backlogs,
            state,
            batch_size=settings.batch_size,
            flush_interval_s=flush_interval_s,
        )
        observe_pace(pace.waiting_batches)
        await write_heartbeat(runtime.redis, runtime.keys)
        if await runtime.redis.set(runtime.keys.prune_turn(), 1, nx=True, px=PRUNE_EVERY_MS):
            await runtime.ledger.prune_consumers(2 * runtime.shards, CONSUMER_IDLE_S)
        groups = call_groups(
            backlogs,
            state,
            batch_size=settings.batch_size,
            flush_interval_s=flush_interval_s,
        )
        observe_bulk(bulk, state, shards)
        observe_tick(settings.flush_interval_s, settings.memory_high_water)
        return groups + bulk_drains(backlogs, bulk, state, live_rung=bool(groups))

    return {"rung": _ring(runtime, runtime.run(decide()))}


@app.task(name="leadsync.refresh_fields", ignore_result=True)
def refresh_fields(only_if_missing: bool = False, attempt: int = 0) -> dict[str, object]:
    """Learn the instance's lead fields from Marketo's describe and share them in Redis
    (``worker.ops.fields``); ``only_if_missing`` at a worker's start. Never raises: a
    failure is logged and the fields learned before stay."""
    try:
        runtime = get_runtime(settings)
        if settings.fields_refresh_s == 0:
            if runtime.run(fields.forget_fields(runtime.redis, runtime.keys)):
                logger.warning(
                    "LEADSYNC_FIELDS_REFRESH_S=0: the learned lead fields are forgotten; "
                    "producers accept any attribute unless LEADSYNC_KNOWN_FIELDS is set"
                )
            report = fields.FieldsRefresh("disabled")
        elif (describe := describer_for(runtime.api, settings)) is None:
            report = fields.FieldsRefresh("unsupported")
        else:
            report = runtime.run(
                fields.refresh_fields(
                    runtime.redis,
                    runtime.keys,
                    runtime.limiter,
                    describe,
                    settings,
                    holder=f"fields:{runtime.consumer}",
                    only_if_missing=only_if_missing,
                )
            )
    except Exception as exc:  # a refresh never takes the worker down
        logger.exception("refreshing the lead fields failed; the fields learned before stay")
        report = fields.FieldsRefresh("failed", detail=type(exc).__name__)
    retry = report.status in ("limited", "failed", "busy") and attempt < FIELDS_START_RETRIES
    if only_if_missing and retry:
        countdown_s = max(report.retry_after_s, FIELDS_RETRY_S * 2**attempt)
        try:
            refresh_fields.apply_async(
                kwargs={"only_if_missing": True, "attempt": attempt + 1},
                queue=QUEUE,
                countdown=countdown_s,
            )
        except Exception:  # beat refreshes them later
            logger.exception("could not queue the lead-field refresh again")
    return report.as_dict()
