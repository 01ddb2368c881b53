"""Prometheus metrics of the worker.

Label values are shard numbers, outcome status names and fault codes only: never a
lead value or a lead key. Under Celery prefork every pool process writes its values
into ``PROMETHEUS_MULTIPROC_DIR`` (``worker.app`` sets it before prometheus_client is
first imported, because the library picks its value store at import time) and the
main process serves the sum of all of them on ``LEADSYNC_METRICS_PORT``.

Gauges set by the tick use ``mostrecent``: the tick runs in whichever pool process
takes it, and the last value written by any process is the current one.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import ParamSpec

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from worker.errors import MarketoError
from worker.ledger import ShardBacklog
from worker.limits import LimiterState

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

OUTCOMES = Counter("leadsync_outcomes", "Outcomes written, by status.", ["status"])
LEADS_PER_CALL = Histogram(
    "leadsync_leads_per_call",
    "Leads carried by one syncMultipleLeads call (the daily quota makes full calls matter).",
    buckets=(1, 10, 25, 50, 100, 150, 200, 250, 299, 300),
)
CALL_SECONDS = Histogram(
    "leadsync_marketo_call_seconds",
    "Duration of one syncMultipleLeads HTTP call, answered or not.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
FAULTS = Counter(
    "leadsync_marketo_faults",
    "Calls that did not succeed, by Marketo fault code (or error class without a code).",
    ["code"],
)
RETRIES = Counter("leadsync_retries", "In-cycle retries of a call after a transient fault.")
STALE_TURNS = Counter(
    "leadsync_stale_turns",
    "Limiter turns given back because the API took long to get ready (REST: a token waited"
    " out); the call went on a fresh turn, and the given-back one is not counted.",
)
LIMITER_REFUSALS = Counter(
    "leadsync_limiter_refusals",
    "Calls the shared limiter did not allow when a drain asked, by reason (rate: the next"
    " evenly spaced turn was further off than a drain waits; concurrency, quota, pace,"
    " bulk_budget, cooldown, hold, failover); the records stayed pending.",
    ["reason"],
)
# Every reason from the start (0), so a rate over them exists before the first refusal.
for _reason in (
    "rate",
    "concurrency",
    "quota",
    "pace",
    "bulk_budget",
    "cooldown",
    "hold",
    "failover",
):
    LIMITER_REFUSALS.labels(reason=_reason)
FENCE_REFUSALS = Counter(
    "leadsync_fence_refusals",
    "Calls not sent because the shard lease, from its last renewal, would not have"
    " outlasted them (a pause between the renewal and the send); the turn was given back.",
)
UNKNOWN_OUTCOMES = Counter(
    "leadsync_unknown_outcomes",
    "Calls whose outcome is unknown (a timeout, a gateway 5xx or a lost or cut reply after"
    " the request was written): never retried in place; their shards rested.",
)
LEASES_LOST = Counter(
    "leadsync_leases_lost",
    "Cycles cut short because the shard lease expired (a paused worker); the fenced writes were refused.",
)
GROUPS_RECREATED = Counter(
    "leadsync_consumer_groups_recreated",
    "Shard consumer groups found missing (Redis lost its data) and recreated at id 0.",
)
PACE_WAIT = Gauge(
    "leadsync_pace_wait_seconds",
    "How long a partial batch waits for the daily-quota pace now (0: partial batches go when due).",
    multiprocess_mode="mostrecent",
)
PACE_WAITING_BATCHES = Gauge(
    "leadsync_pace_waiting_batches",
    "Partial batches due but held back by the quota pace: the inflow needs more calls than the share.",
    multiprocess_mode="mostrecent",
)
ISOLATION_CALLS = Counter(
    "leadsync_isolation_calls",
    "Calls spent isolating records that made a whole call fault (beyond each batch's first).",
)
IDENTITY_CALLS = Counter(
    "leadsync_identity_calls",
    "REST token fetches from Marketo's identity endpoint (about one per token lifetime "
    "for the whole cluster).",
)
DRAIN_TIMEOUTS = Counter(
    "leadsync_drain_timeouts",
    "Drains stopped by LEADSYNC_DRAIN_TIMEOUT_S; their entries stay pending.",
)
BACKLOG = Gauge(
    "leadsync_backlog_entries",
    "Entries in a shard stream not yet committed.",
    ["shard"],
    multiprocess_mode="mostrecent",
)
OLDEST_AGE = Gauge(
    "leadsync_oldest_entry_age_seconds",
    "Age of the oldest entry of a shard (0 when empty).",
    ["shard"],
    multiprocess_mode="mostrecent",
)
BULK_BACKLOG = Gauge(
    "leadsync_bulk_backlog_entries",
    "Entries in a shard's bulk stream not yet committed.",
    ["shard"],
    multiprocess_mode="mostrecent",
)
BULK_OLDEST_AGE = Gauge(
    "leadsync_bulk_oldest_entry_age_seconds",
    "Age of the oldest entry of a shard's bulk stream (0 when empty).",
    ["shard"],
    multiprocess_mode="mostrecent",
)
BULK_CALLS_TODAY = Gauge(
    "leadsync_bulk_calls_today",
    "Bulk-lane calls counted in today's bulk budget.",
    multiprocess_mode="mostrecent",
)
BULK_BUDGET = Gauge(
    "leadsync_bulk_budget_calls",
    "The bulk lane's daily call budget (LEADSYNC_BULK_DAILY_CALLS).",
    multiprocess_mode="mostrecent",
)
CALLS_IN_WINDOW = Gauge(
    "leadsync_limiter_calls_in_window",
    "Calls made in the current rate window, across all pods.",
    multiprocess_mode="mostrecent",
)
SLOTS_IN_USE = Gauge(
    "leadsync_limiter_slots_in_use",
    "Calls in flight across all pods.",
    multiprocess_mode="mostrecent",
)
QUOTA_USED = Gauge(
    "leadsync_quota_used_today",
    "Calls counted against today's Marketo quota.",
    multiprocess_mode="mostrecent",
)
HOLD = Gauge(
    "leadsync_hold",
    "1 while the pipeline holds (Marketo refused the credentials), else 0.",
    multiprocess_mode="mostrecent",
)
COOLDOWN = Gauge(
    "leadsync_cooldown_seconds",
    "Seconds left of the cluster-wide cooldown after throttling.",
    multiprocess_mode="mostrecent",
)
LAST_TICK = Gauge(
    "leadsync_last_tick_timestamp_seconds",
    "When a tick last read the backlogs and the limits (Unix time). Beat sends the tick"
    " every second; a value that stops moving means no tick runs (beat stopped, or no pool"
    " process takes it), while the other gauges keep their last values.",
    multiprocess_mode="mostrecent",
)
# The settings the alert rules compare against (deploy/monitoring/alerts.yml records them
# as leadsync:config:*), exported by the workers so that the thresholds follow what runs.
FLUSH_INTERVAL = Gauge(
    "leadsync_flush_interval_seconds",
    "LEADSYNC_FLUSH_INTERVAL_S: a partial batch is due once its oldest entry waited this long.",
    multiprocess_mode="mostrecent",
)
MEMORY_HIGH_WATER = Gauge(
    "leadsync_memory_high_water_ratio",
    "LEADSYNC_MEMORY_HIGH_WATER: upserts are refused from this fraction of Redis's"
    " maxmemory (0: no memory bound).",
    multiprocess_mode="mostrecent",
)
QUOTA_SHARE = Gauge(
    "leadsync_quota_share_calls",
    "leadsync's share of the instance's daily Marketo call quota (LEADSYNC_DAILY_QUOTA).",
    multiprocess_mode="mostrecent",
)

# The HTTP API (`leadsync api`): labels are route templates, methods and status codes.
API_REQUESTS = Counter(
    "leadsync_api_requests",
    "HTTP API requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
API_REQUEST_SECONDS = Histogram(
    "leadsync_api_request_seconds",
    "Time to answer one HTTP API request, by route template.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
API_UPSERTS = Counter(
    "leadsync_api_upserts_accepted", "Lead upserts the HTTP API enqueued (202 or in a batch)."
)


def fault_label(exc: MarketoError) -> str:
    """Marketo's fault code, or the error class when the failure carries no code."""
    return str(exc.code) if exc.code is not None else type(exc).__name__


P = ParamSpec("P")


def never_raises(record: Callable[P, None]) -> Callable[P, None]:
    """Metrics must never break the data path: a failing recorder (for example a vanished
    multiprocess directory) is logged and ignored, so a sent batch still commits."""

    @functools.wraps(record)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            logger.warning("could not record metric %s", record.__name__, exc_info=True)

    return guarded


@never_raises
def record_call(leads: int, seconds: float) -> None:
    LEADS_PER_CALL.observe(leads)
    CALL_SECONDS.observe(seconds)


@never_raises
def record_fault(exc: MarketoError) -> None:
    FAULTS.labels(code=fault_label(exc)).inc()


@never_raises
def record_retry() -> None:
    RETRIES.inc()


@never_raises
def record_stale_turn() -> None:
    STALE_TURNS.inc()


@never_raises
def record_limiter_refusal(reason: str) -> None:
    LIMITER_REFUSALS.labels(reason=reason).inc()


@never_raises
def record_fence_refusal() -> None:
    FENCE_REFUSALS.inc()


@never_raises
def record_unknown_outcome() -> None:
    UNKNOWN_OUTCOMES.inc()


@never_raises
def record_lease_lost() -> None:
    LEASES_LOST.inc()


@never_raises
def record_groups_recreated() -> None:
    GROUPS_RECREATED.inc()


@never_raises
def record_isolation_calls(calls: int) -> None:
    if calls:
        ISOLATION_CALLS.inc(calls)


@never_raises
def record_identity_call() -> None:
    IDENTITY_CALLS.inc()


@never_raises
def record_drain_timeout() -> None:
    DRAIN_TIMEOUTS.inc()


@never_raises
def record_api_request(route: str, method: str, status: int, seconds: float) -> None:
    API_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    API_REQUEST_SECONDS.labels(route=route).observe(seconds)


@never_raises
def record_api_upserts(count: int) -> None:
    API_UPSERTS.inc(count)


@never_raises
def record_outcomes(counts: Mapping[str, int]) -> None:
    for status, count in counts.items():
        if count:
            OUTCOMES.labels(status=status).inc(count)


@never_raises
def observe_backlogs(backlogs: Iterable[ShardBacklog]) -> None:
    seen = set()
    for backlog in backlogs:
        seen.add(backlog.shard)
        BACKLOG.labels(shard=str(backlog.shard)).set(backlog.entries)
        OLDEST_AGE.labels(shard=str(backlog.shard)).set(backlog.oldest_age_s or 0.0)
    _zero_gone("live", seen, BACKLOG, OLDEST_AGE)


#: Per lane, the shards whose gauges this process has set: after ``leadsync reshard`` lowers
#: the count, the shards gone are set to 0 once, so their last values (a multiprocess
#: gauge keeps them in its file) never show a backlog that no longer exists.
_SHARDS_SET: dict[str, set[int]] = {}


def _zero_gone(family: str, seen: set[int], *gauges: Gauge) -> None:
    before = _SHARDS_SET.setdefault(family, set())
    for shard in before - seen:
        for gauge in gauges:
            gauge.labels(shard=str(shard)).set(0)
    before.clear()
    before.update(seen)


@never_raises
def observe_bulk(backlogs: Iterable[ShardBacklog], state: LimiterState, shards: int) -> None:
    """The bulk lane: its streams (labelled by their shard) and its budget."""
    seen = set()
    for backlog in backlogs:
        seen.add(backlog.shard - shards)
        shard = str(backlog.shard - shards)
        BULK_BACKLOG.labels(shard=shard).set(backlog.entries)
        BULK_OLDEST_AGE.labels(shard=shard).set(backlog.oldest_age_s or 0.0)
    _zero_gone("bulk", seen, BULK_BACKLOG, BULK_OLDEST_AGE)
    BULK_CALLS_TODAY.set(state.bulk_used_today)
    BULK_BUDGET.set(state.bulk_limit)


@never_raises
def observe_limiter(state: LimiterState) -> None:
    CALLS_IN_WINDOW.set(state.calls_in_window)
    SLOTS_IN_USE.set(state.slots_in_use)
    QUOTA_USED.set(state.quota_used_today)
    QUOTA_SHARE.set(state.quota_limit)
    HOLD.set(1 if state.hold_reason else 0)
    COOLDOWN.set(state.cooldown_remaining_s)
    PACE_WAIT.set(state.pace_wait_s)


@never_raises
def observe_pace(waiting_batches: int) -> None:
    PACE_WAITING_BATCHES.set(waiting_batches)


@never_raises
def observe_tick(flush_interval_s: float, memory_high_water: float) -> None:
    """A tick read the backlogs and the limits: its time, and the settings it ran with."""
    FLUSH_INTERVAL.set(flush_interval_s)
    MEMORY_HIGH_WATER.set(memory_high_water)
    LAST_TICK.set_to_current_time()


# --- process hooks (connected to Celery signals in worker.app) ------------------------


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def remove_stale_files(directory: Path, keep_pid: int) -> int:
    """Delete value files of processes from an earlier run (a restarted container keeps
    its emptyDir); the files of ``keep_pid`` stay. Returns how many were removed."""
    removed = 0
    for path in directory.glob("*.db"):
        if not path.stem.endswith(f"_{keep_pid}"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def serving_registry() -> CollectorRegistry:
    """The registry to expose: the sum over every process in multiprocess mode."""
    directory = multiproc_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def serve(port: int, addr: str = "0.0.0.0") -> bool:
    """Serve /metrics on ``port`` from a daemon thread; 0 disables. True when serving."""
    if port == 0:
        return False
    start_http_server(port, addr=addr, registry=serving_registry())
    logger.info("metrics served on port %d", port)
    return True


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a pool process that exits (its counters still count)."""
    if multiproc_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
