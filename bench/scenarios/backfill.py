"""``backfill``: a live inflow of single upserts beside ``leadsync backfill FILE``, against a
simulator with Marketo's limits (100 calls / 20 s, 10 in flight), a real Celery worker with
its embedded beat, and a private redis-server with a maxmemory and ``noeviction``.

One run, sub-runs side by side (``--runs``), each on its own Redis, simulator and worker:

- ``live``: the live inflow alone (``--rate`` leads/s of ``LeadProducer.upsert`` for
  ``--duration-s``);
- ``bulk``: the same inflow while ``leadsync backfill`` (a subprocess) sends a generated
  CSV of ``--rows`` rows into the bulk lane (its default), with ``--max-backlog 0`` (the
  lane drains at its budget's pace, over a day: the run ends once the rows are in and
  the live inflow is done) and the bulk budget scaled with the rows;
- ``throttled``: the same backfill in the live lane (``--live``), the baseline the lane
  is judged against;
- ``unthrottled``: ``--live`` with ``--max-backlog 0``, and ``LEADSYNC_MAX_SHARD_BACKLOG``
  (``--shard-cap``) low enough that admission control is reached: what the live producer
  and the backfill see then;
- ``highwater``: ``bulk`` on a Redis whose maxmemory (``--highwater-maxmemory-mb``) the
  backfill fills, so bulk admission refuses at the high-water mark less
  ``LEADSYNC_LIVE_MEMORY_RESERVE`` while the live inflow is still admitted (below the mark
  itself); the backfill gives up after ``--highwater-retry-s`` of refusals (exit 75, its
  message), or is stopped once the live inflow is done. A bulk probe (one record) at the
  end shows what the bulk lane is answered then.

Per sub-run: live enqueue-to-outcome p50/p99 (the outcome's ``finished_at`` minus its
enqueue time) and from the first attempt (a refused live upsert is retried after the
Backpressure's retry-after, as an app answering its caller with 503 would be retried);
calls and leads per call (the simulator's call log); bulk rows enqueued and delivered (the
outcomes of the backfill's journaled ids); Redis peak ``used_memory`` against maxmemory;
Backpressure refusals and OOM errors as Redis counted them (``INFO errorstats``) and as the
live producer saw them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    ROOT,
    WORKDIR,
    SimProcess,
    Worker,
    code_version,
    machine_line,
    md_table,
    scratch_dir,
    write_section,
)
from bench.scenarios.steady import api_settings, pace_headroom, percentile
from bench.systems import LEADSYNC_PREFIX, backlog, leadsync_env
from marketo_sim.embedded import embedded_redis, stop_group
from producers.config import ProducerConfig
from producers.contract import Keys, LimiterKeys, entry_time_s, parse_request_id
from producers.errors import Backpressure
from producers.producer import LeadProducer

#: Marketo's limits, given to the simulator and to leadsync alike (as marketo-bound does).
RATE_CALLS = 100
WINDOW_S = 20.0
CONCURRENT = 10
#: The backfill the issue describes, the SOAP default quota and leadsync's default share.
FULL_BACKFILL = 1_000_000
SOAP_INSTANCE_QUOTA = 10_000
DEFAULT_SHARE = 5_000
#: The bulk lane's default budget for SOAP (a fifth of the quota), scaled like the share.
DEFAULT_BULK_BUDGET = 2_000
#: ``leadsync backfill``'s default --max-backlog (total entries in the shard streams).
CLI_MAX_BACKLOG = 20_000
RUNS = ("live", "bulk", "throttled", "unthrottled", "highwater")
#: The sub-runs whose backfill goes into the bulk lane.
BULK_RUNS = ("bulk", "highwater")
#: Leads per full call.
BATCH = 300
#: Seconds in a quota day.
DAY_S = 86_400
#: The simulator's faults for a call over its rate or concurrency limit.
LIMIT_CODES = ("20023", "20024")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne")


# --- the inputs ------------------------------------------------------------------------


def write_csv(path: Path, rows: int, seed: int) -> None:
    """``rows`` distinct people (email, FirstName, Company, Phone), none of them live."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        out.write("email,FirstName,Company,Phone\n")
        for index in range(rows):
            out.write(
                f"bulk{index}@backfill.example.com,Bulk{index % 997},"
                f"{rng.choice(COMPANIES)},650-555-{rng.randrange(10_000):04d}\n"
            )


class LiveInflow(threading.Thread):
    """Single upserts paced evenly at ``rate`` per second for ``duration_s``; a refused one
    (Backpressure) is tried again after its retry-after, another Redis error after 1 s."""

    def __init__(self, producer: LeadProducer, rate: float, duration_s: float) -> None:
        super().__init__(daemon=True, name="live")
        self.producer = producer
        self.rate = rate
        self.total = max(1, round(rate * duration_s))
        self.ids: list[tuple[str, float]] = []  # (request id, first attempt, wall clock)
        self.refusals = 0  # Backpressure answers (attempts)
        self.refused_leads: set[int] = set()
        self.first_refusal = ""  # what the first Backpressure said
        self.errors: Counter[str] = Counter()  # other Redis errors, by type
        self.retry_deadline_s = 600.0
        self.span_s = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def lead(self, index: int) -> dict[str, Any]:
        return {
            "email": f"live{index}@live.example.com",
            "attributes": {"FirstName": f"Live{index}", "Company": COMPANIES[index % 7]},
        }

    def attempt(self, index: int, first: float, retries: collections.deque[Any]) -> None:
        try:
            self.ids.append((self.producer.upsert(**self.lead(index)), first))
        except Backpressure as exc:
            self.refusals += 1
            self.refused_leads.add(index)
            self.first_refusal = (
                self.first_refusal or f"{exc} (retry after {exc.retry_after_s:g} s)"
            )
            retries.append((time.monotonic() + exc.retry_after_s, index, first))
        except redis.RedisError as exc:
            self.errors[type(exc).__name__] += 1
            retries.append((time.monotonic() + 1.0, index, first))

    def run(self) -> None:
        try:
            retries: collections.deque[tuple[float, int, float]] = collections.deque()
            start = time.monotonic()
            sent = 0
            while (sent < self.total or retries) and not self.stop.is_set():
                now = time.monotonic()
                while retries and retries[0][0] <= now:
                    _, index, first = retries.popleft()
                    self.attempt(index, first, retries)
                if sent < self.total and now >= start + sent / self.rate:
                    self.attempt(sent, time.time(), retries)
                    sent += 1
                    if sent == self.total:
                        self.span_s = time.monotonic() - start
                    continue
                if now - start > self.total / self.rate + self.retry_deadline_s:
                    break
                due = [start + sent / self.rate] if sent < self.total else []
                due += [retries[0][0]] if retries else []
                time.sleep(min(0.05, max(0.0, min(due, default=now + 0.05) - now)))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


class Sampler(threading.Thread):
    """Redis ``used_memory`` and the total backlog every 0.25 s."""

    def __init__(self, redis_url: str, keys: Keys, shards: int) -> None:
        super().__init__(daemon=True, name="sampler")
        self.client = redis.Redis.from_url(redis_url)
        self.keys, self.shards = keys, shards
        self.peak_used = 0
        self.peak_backlog = 0
        self.trace: list[tuple[float, int, int]] = []  # (s from start, used, backlog)
        #: When Redis first counted a Backpressure reply (s from start), and used_memory then.
        self.first_refused: tuple[float, int] | None = None
        self.stop = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(redis.RedisError):
                used = int(self.client.info("memory")["used_memory"])
                waiting = backlog(self.client, self.keys, self.shards)
                self.peak_used = max(self.peak_used, used)
                self.peak_backlog = max(self.peak_backlog, waiting)
                at = round(time.monotonic() - self.started, 2)
                self.trace.append((at, used, waiting))
                if self.first_refused is None and errorstats(self.client).get("BACKPRESSURE"):
                    self.first_refused = (at, used)
            self.stop.wait(0.25)
        self.client.close()


# --- one sub-run ------------------------------------------------------------------------


@dataclass
class Config:
    rows: int
    rate: float
    duration_s: float
    shards: int
    concurrency: int
    maxmemory_mb: int
    highwater_maxmemory_mb: int
    highwater_retry_s: float
    shard_cap: int
    share: int
    bulk_budget: int
    latency: float
    jitter: float
    tail_timeout_s: float
    csv: Path
    seed: int
    machine: list[str] = field(default_factory=list)


def errorstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("errorstats")
    return {k.removeprefix("errorstat_"): int(v["count"]) for k, v in stats.items()}


def journal_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        _, _, value = line.partition("\t")
        if value and not value.startswith("ERROR"):
            ids.append(value)
    return ids


def day_count(client: redis.Redis, counter: str) -> int:
    """The limiter's day counter of that name (``quota``: the live share's calls;
    ``bulk-quota``: the bulk lane's), summed over the days the run touched."""
    pattern = LimiterKeys(LEADSYNC_PREFIX).quota("*").replace(":quota:", f":{counter}:")
    return sum(int(client.get(key) or 0) for key in client.scan_iter(match=pattern))


def read_outcomes(producer: LeadProducer, request_ids: Sequence[str]) -> list[Any]:
    found: list[Any] = []
    for start in range(0, len(request_ids), 2000):
        found.extend(producer.outcomes(list(request_ids[start : start + 2000])))
    return found


def bulk_probe(producer: LeadProducer) -> str:
    """One bulk record offered at the end: what the bulk lane is answered then."""
    record = {"email": "probe@backfill.example.com", "attributes": {"FirstName": "Probe"}}
    try:
        producer.upsert_many([record], lane="bulk")
    except Backpressure as exc:
        return f"Backpressure: {exc} (retry after {exc.retry_after_s:g} s)"
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "admitted"


def run_one(name: str, cfg: Config) -> dict[str, Any]:
    """One sub-run (one of RUNS): the figures as a dict."""
    with_backfill = name != "live"
    cap = cfg.shard_cap if name == "unthrottled" else None
    sim_fields = {
        "latency_s": cfg.latency,
        "latency_jitter_s": cfg.jitter,
        "rate_limit_calls": RATE_CALLS,
        "rate_window_s": WINDOW_S,
        "max_concurrent": CONCURRENT,
        "daily_quota": 2 * cfg.share,
        "seed": cfg.seed,
    }
    with embedded_redis() as (redis_url, _), SimProcess(**sim_fields) as sim:
        if not cfg.machine:
            cfg.machine.append(machine_line(redis_url))
        client = redis.Redis.from_url(redis_url)
        maxmemory_mb = cfg.highwater_maxmemory_mb if name == "highwater" else cfg.maxmemory_mb
        client.config_set("maxmemory", f"{maxmemory_mb}mb")
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
        settings_env: dict[str, object] = {
            "rate_limit_calls": RATE_CALLS,
            "rate_limit_window_s": WINDOW_S,
            "max_concurrent_calls": CONCURRENT,
            "daily_quota": cfg.share,
            "bulk_daily_calls": cfg.bulk_budget,
        }
        if cap is not None:
            settings_env["max_shard_backlog"] = cap
        env = leadsync_env(redis_url, sim, shards=cfg.shards, **settings_env)
        settings = api_settings(
            "soap", redis_url=redis_url, key_prefix=LEADSYNC_PREFIX, daily_quota=cfg.share
        )
        headroom = pace_headroom(client, settings)
        keys = Keys(LEADSYNC_PREFIX)
        work = scratch_dir(f"backfill-{name}-")
        worker = Worker(
            "worker.app",
            "leadsync",
            cfg.concurrency,
            env,
            extra_args=["-B", "--schedule", str(work / "beat-schedule")],
        )
        config = ProducerConfig.from_env(env)
        sampler = Sampler(redis_url, keys, cfg.shards)
        ids_path = work / "backfill.ids"
        backfill: subprocess.Popen[bytes] | None = None
        backfill_log = work / "backfill.log"
        backfill_exit: int | None = None
        backfill_s: float | None = None
        bulk_done_s: float | None = None
        probe = ""
        try:
            worker.start()
            worker.wait_ready()
            with LeadProducer(
                redis.Redis.from_url(redis_url), config=config, owns_client=True
            ) as producer:
                sampler.start()
                started = time.monotonic()
                if with_backfill:
                    command = [
                        sys.executable,
                        "-m",
                        "worker.cli",
                        "backfill",
                        str(cfg.csv),
                        "--ids",
                        str(ids_path),
                        "--no-wait",
                    ]
                    if name not in BULK_RUNS:
                        command += ["--live"]
                    if name == "highwater":
                        command += ["--retry-for-s", f"{cfg.highwater_retry_s:g}"]
                    if name in ("unthrottled", *BULK_RUNS):
                        # The bulk lane drains at its budget's pace (a day): waiting for
                        # its backlog to fall would outlast the run. Admission still
                        # refuses at the memory high water.
                        command += ["--max-backlog", "0"]
                    with backfill_log.open("wb") as log:
                        backfill = subprocess.Popen(
                            command,
                            cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", **env},
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    # The live inflow starts once the backfill's first chunk is in.
                    deadline = time.monotonic() + 30
                    while not backlog(client, keys, cfg.shards) and time.monotonic() < deadline:
                        time.sleep(0.05)
                live_from = time.monotonic()
                inflow = LiveInflow(producer, cfg.rate, cfg.duration_s)
                inflow.retry_deadline_s = cfg.tail_timeout_s
                inflow.start()
                pending: list[str] = []
                seen = 0
                deadline = live_from + cfg.duration_s + cfg.tail_timeout_s
                while time.monotonic() < deadline:
                    worker.check_alive()
                    if backfill is not None and backfill_exit is None:
                        backfill_exit = backfill.poll()
                        if backfill_exit is not None:
                            backfill_s = time.monotonic() - started
                    fresh = [rid for rid, _ in inflow.ids[seen:]]
                    seen += len(fresh)
                    pending += fresh
                    if pending:
                        got = read_outcomes(producer, pending)
                        pending = [
                            rid
                            for rid, o in zip(pending, got, strict=True)
                            if o is None or not o.status.is_final
                        ]
                    # An entry leaves its stream when its outcome is stored: what the
                    # streams hold beyond the live upserts still waiting is bulk.
                    if (
                        with_backfill
                        and bulk_done_s is None
                        and backfill_exit is not None
                        and backlog(client, keys, cfg.shards) <= len(pending)
                    ):
                        bulk_done_s = time.monotonic() - started
                    live_done = not inflow.is_alive() and not pending
                    # The bulk lane spreads its budget over the day: the run does not wait
                    # for it, only for the backfill to be enqueued.
                    bulk_waits = name == "bulk" and backfill_exit is not None
                    # At the high-water mark the backfill may be refused for as long as
                    # the lane stays full: the run ends with the live inflow.
                    if live_done and (
                        not with_backfill
                        or bulk_done_s is not None
                        or bulk_waits
                        or name == "highwater"
                    ):
                        break
                    time.sleep(1.0)
                inflow.stop.set()
                inflow.join()
                if inflow.error is not None:
                    raise inflow.error
                if name == "highwater":
                    probe = bulk_probe(producer)
                if backfill is not None and backfill.poll() is None:
                    stop_group(backfill, signal.SIGINT)
                # Every figure below is of this moment: the worker stops first, as reading
                # a million outcomes takes minutes in which the bulk lane would go on.
                stopped_s = time.monotonic() - started
                worker.stop()
                live_outcomes = read_outcomes(producer, [rid for rid, _ in inflow.ids])
                bulk_ids = journal_ids(ids_path)
                bulk_statuses = Counter(
                    "UNKNOWN" if o is None else o.status.value
                    for o in read_outcomes(producer, bulk_ids)
                )
                errors = errorstats(client)
                share_calls = day_count(client, "quota")
                bulk_calls = day_count(client, "bulk-quota")
                memory = client.info("memory")
                left = backlog(client, keys, cfg.shards)
        finally:
            sampler.stop.set()
            if backfill is not None and backfill.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(backfill.pid, signal.SIGKILL)
                backfill.wait()
            worker.stop()
            client.close()
        sampler.join()
        log = sim.admin.calls()
        summary = sim.admin.summary()

    from_enqueue: list[float] = []
    from_attempt: list[float] = []
    live_statuses: Counter[str] = Counter()
    for (rid, first), outcome in zip(inflow.ids, live_outcomes, strict=True):
        if outcome is None:
            live_statuses["UNKNOWN"] += 1
            continue
        live_statuses[outcome.status.value] += 1
        if outcome.status.is_final and outcome.finished_at is not None:
            enqueued = outcome.enqueued_at or entry_time_s(parse_request_id(rid)[1])
            from_enqueue.append(outcome.finished_at - enqueued)
            from_attempt.append(outcome.finished_at - first)
    from_enqueue.sort()
    from_attempt.sort()
    ok_sizes = [int(c["leads"]) for c in log if c["outcome"] == "ok"]
    tail = backfill_log.read_text(errors="replace").strip().splitlines() if with_backfill else []
    summary_line = next((line for line in reversed(tail) if line.startswith("rows read")), "")
    # The CLI's console wraps long lines: the message runs on to the next ones.
    gave_up_at = next((i for i, line in enumerate(tail) if "gave up after" in line), None)
    gave_up_line = (
        ""
        if gave_up_at is None
        else " ".join(line.strip() for line in tail[gave_up_at : gave_up_at + 3]).split(
            ": run the same"
        )[0]
    )
    live_refused_by_redis = inflow.refusals
    return {
        "run": name,
        "backfill": (
            "none"
            if not with_backfill
            else "bulk lane, --max-backlog 0"
            if name == "bulk"
            else f"bulk lane, --max-backlog 0, --retry-for-s {cfg.highwater_retry_s:g}"
            if name == "highwater"
            else f"--live --max-backlog {0 if name == 'unthrottled' else CLI_MAX_BACKLOG:,}"
            + (" (none)" if name == "unthrottled" else " (default)")
        ),
        "shard_cap": cap if cap is not None else config.max_shard_backlog,
        "high_water": config.memory_high_water,
        "live_memory_reserve": config.live_memory_reserve,
        "maxmemory": maxmemory,
        "live_upserts": len(inflow.ids),
        "live_planned": inflow.total,
        "live_span_s": inflow.span_s,
        "live_refusals": inflow.refusals,
        "live_refused_leads": len(inflow.refused_leads),
        "live_errors": dict(inflow.errors),
        "first_refusal": inflow.first_refusal,
        "live_statuses": dict(live_statuses),
        "p50_s": percentile(from_enqueue, 0.50),
        "p99_s": percentile(from_enqueue, 0.99),
        "max_s": from_enqueue[-1] if from_enqueue else None,
        "attempt_p50_s": percentile(from_attempt, 0.50),
        "attempt_p99_s": percentile(from_attempt, 0.99),
        "calls": len(log),
        "calls_ok": len(ok_sizes),
        "call_outcomes": dict(Counter(c["fault_code"] or c["outcome"] for c in log)),
        "leads_per_call": sum(ok_sizes) / len(ok_sizes) if ok_sizes else 0.0,
        "full_calls": sum(1 for n in ok_sizes if n >= 300),
        "max_in_flight_sim": summary.get("max_concurrency"),
        "max_calls_in_20s_sim": summary.get("max_calls_in_window"),
        "rows": cfg.rows if with_backfill else 0,
        "bulk_enqueued": len(bulk_ids),
        "bulk_statuses": dict(bulk_statuses),
        "bulk_delivered": bulk_statuses.get("CREATED", 0) + bulk_statuses.get("UPDATED", 0),
        # Marketo's count: the people the simulator holds, less the live ones.
        "bulk_in_marketo": (
            int(summary["leads_in_database"])
            - live_statuses.get("CREATED", 0)
            - live_statuses.get("UPDATED", 0)
            if with_backfill and "leads_in_database" in summary
            else None
        ),
        "backfill_exit": backfill_exit,
        "backfill_enqueue_s": backfill_s,
        "bulk_done_s": bulk_done_s,
        "stopped_s": stopped_s,
        "backfill_summary": summary_line,
        "backfill_gave_up": gave_up_line,
        "first_refused_s": None if sampler.first_refused is None else sampler.first_refused[0],
        "used_at_first_refusal": (
            None if sampler.first_refused is None else sampler.first_refused[1]
        ),
        "bulk_probe": probe,
        "backfill_log": str(backfill_log) if with_backfill else None,
        "peak_used": max(sampler.peak_used, int(memory["used_memory_peak"])),
        "peak_used_sampled": sampler.peak_used,
        "end_used": int(memory["used_memory"]),
        "peak_backlog": sampler.peak_backlog,
        "backlog_left": left,
        "errorstats": errors,
        "backpressure_total": errors.get("BACKPRESSURE", 0),
        "backpressure_bulk": errors.get("BACKPRESSURE", 0) - live_refused_by_redis,
        "oom": errors.get("OOM", 0),
        "quota_share": cfg.share,
        "share_calls": share_calls,
        "bulk_calls": bulk_calls,
        "bulk_budget": cfg.bulk_budget,
        "bulk_days_left": (
            math.ceil(
                max(cfg.rows - bulk_statuses.get("CREATED", 0) - bulk_statuses.get("UPDATED", 0), 0)
                / BATCH
            )
            / cfg.bulk_budget
            if name == "bulk"
            else None
        ),
        "pace_headroom_at_start": headroom,
        "worker_log": str(WORKDIR / f"{worker.name}.log"),
        "trace": sampler.trace[:: max(1, len(sampler.trace) // 120)],
    }


# --- tables -------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _mb(value: int) -> str:
    return f"{value / 2**20:,.0f} MB"


def row(r: Mapping[str, Any]) -> list[object]:
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(r["live_statuses"].items()))
    return [
        r["run"],
        r["backfill"],
        f"{r['shard_cap']:,}" if r["shard_cap"] else "none",
        f"{r['live_upserts']:,} ({statuses})",
        f"{_s(r['p50_s'])} / {_s(r['p99_s'])} / {_s(r['max_s'])}",
        f"{_s(r['attempt_p50_s'])} / {_s(r['attempt_p99_s'])}",
        f"{r['live_refusals']:,} ({r['live_refused_leads']:,} leads)"
        + "".join(f", {k} {v}" for k, v in sorted(r["live_errors"].items())),
        f"{r['calls']:,} ({r['full_calls']:,} full)",
        f"{r['leads_per_call']:.1f}",
        sum(int(r["call_outcomes"].get(code, 0)) for code in LIMIT_CODES),
        f"{r['share_calls']:,} ({r['share_calls'] / r['quota_share']:.0%} of {r['quota_share']:,})",
        f"{r['bulk_calls']:,} of {r['bulk_budget']:,}"
        + (f"; the rest in {r['bulk_days_left']:.1f} days" if r["bulk_days_left"] else ""),
        "-"
        if not r["rows"]
        else f"{r['rows']:,} / {r['bulk_enqueued']:,} / {r['bulk_delivered']:,}"
        + (
            f" ({r['bulk_in_marketo']:,} in Marketo)"
            if r.get("bulk_in_marketo") is not None
            else ""
        ),
        (_s(r["backfill_enqueue_s"]) + " / " + _s(r["bulk_done_s"]) if r["rows"] else "-")
        + f"; stopped at {_s(r.get('stopped_s'))}",
        f"{r['peak_backlog']:,}",
        f"{_mb(r['peak_used'])} ({r['peak_used'] / r['maxmemory']:.0%} of {_mb(r['maxmemory'])})",
        f"{r['backpressure_total']:,}"
        + (f" (bulk {r['backpressure_bulk']:,})" if r["rows"] else ""),
        r["oom"],
    ]


HEADERS = [
    "run",
    "backfill",
    "LEADSYNC_MAX_SHARD_BACKLOG",
    "live upserts (outcomes)",
    "live p50 / p99 / max, enqueue → outcome",
    "live p50 / p99 from first attempt",
    "live Backpressure refusals",
    "calls (full)",
    "leads/call",
    "limit faults (20023/20024)",
    "calls of the quota share",
    "bulk calls of the bulk budget (rest at its pace)",
    "bulk rows / enqueued / delivered (outcomes; and people in Marketo less the live ones)",
    "backfill enqueued all / all delivered; the worker stopped (s from start)",
    "peak backlog",
    "Redis peak used_memory",
    "Backpressure refusals (Redis errorstats)",
    "OOM errors",
]


def target_rows(runs: Sequence[Mapping[str, Any]], flush_s: float) -> list[list[object]]:
    base = next((r for r in runs if r["run"] == "live"), None)
    rows: list[list[object]] = []
    for r in runs:
        if r["run"] == "live" or base is None or base["p99_s"] is None or r["p99_s"] is None:
            continue
        growth = r["p99_s"] - base["p99_s"]
        rows.append(
            [
                r["run"],
                f"{_s(base['p99_s'])} → {_s(r['p99_s'])} ({growth:+.1f} s)",
                "yes" if growth <= flush_s else "**no**",
                "yes" if r["oom"] == 0 else f"**no** ({r['oom']})",
                "yes" if r["live_refusals"] == 0 else f"**no** ({r['live_refusals']:,})",
            ]
        )
    return rows


def describe(args: argparse.Namespace, share: int, bulk_budget: int, flush_s: float) -> str:
    return (
        f"Simulator: {args.latency:g} s per call (+ up to {args.jitter:g} s), Marketo's limits "
        f"{RATE_CALLS} calls / {WINDOW_S:g} s and {CONCURRENT} in flight, daily quota "
        f"{2 * share:,}. leadsync: the same limits (LEADSYNC_RATE_LIMIT_CALLS={RATE_CALLS}, "
        f"LEADSYNC_MAX_CONCURRENT_CALLS={CONCURRENT}), LEADSYNC_DAILY_QUOTA={share:,}, every "
        f"other setting at its default (LEADSYNC_FLUSH_INTERVAL_S={flush_s:g}, "
        f"{args.shards} shards); one Celery worker with {args.concurrency} processes and its "
        "embedded beat (`-B`). The quota is scaled with the rows: the issue's backfill is "
        f"{FULL_BACKFILL:,} rows against the default share {DEFAULT_SHARE:,} of "
        f"{SOAP_INSTANCE_QUOTA:,}; {args.rows:,} rows get {share:,} of {2 * share:,}, so the "
        "backfill's full calls take the same fraction of the share (each sub-run starts a "
        "fresh day on its own Redis); the bulk budget likewise: "
        f"LEADSYNC_BULK_DAILY_CALLS={bulk_budget:,} ({DEFAULT_BULK_BUDGET:,} for "
        f"{FULL_BACKFILL:,} rows), spread over the day by its pace line. `bulk` sends the "
        "backfill into the bulk lane (`leadsync backfill`'s default); `throttled` and "
        "`unthrottled` into the live lane (`--live`). Redis: a private redis-server, maxmemory "
        f"{args.maxmemory_mb} MB, noeviction, producers' LEADSYNC_MEMORY_HIGH_WATER at its "
        "default. Live inflow: "
        f"{args.rate:g} leads/s of `LeadProducer.upsert` (distinct people) for "
        f"{args.duration_s:g} s, started once the backfill's first chunk is in; a refused "
        "upsert (Backpressure) is sent again after its retry-after. Backfill: `python -m "
        f"worker.cli backfill` of a generated CSV of {args.rows:,} distinct people with "
        "`--no-wait` (the bench follows delivery itself: the CLI's delivery bar reads 1,000 "
        "ids a second, slower than the 1,500 leads/s Marketo's limits allow); `unthrottled` "
        f"adds `--max-backlog 0` and sets LEADSYNC_MAX_SHARD_BACKLOG={args.shard_cap:,} for "
        "every producer (live, backfill, worker), so the admission bound is reached. "
        "`highwater` is `bulk` on a Redis of maxmemory "
        f"{args.highwater_maxmemory_mb} MB, which the backfill fills: bulk admission refuses at "
        "LEADSYNC_MEMORY_HIGH_WATER - LEADSYNC_LIVE_MEMORY_RESERVE of maxmemory (defaults: "
        "0.85 - 0.15), live only at the high water; the backfill has `--retry-for-s "
        f"{args.highwater_retry_s:g}` (it gives up, exit 75, after that long refused without "
        "a chunk taken) and is stopped once the live inflow is done; then one bulk record is "
        "offered (the probe). "
        "The run stops the worker once the live inflow is delivered (and the backfill is in, "
        "or, `highwater`, stopped) and reads every figure after that. "
        "Latency = the outcome's finished_at - the enqueue time (the request id's entry time) "
        "and - the first attempt; calls, leads/call from the simulator's call log (every call, "
        "live and bulk share them); bulk delivered = the journaled ids with a CREATED/UPDATED "
        "outcome; Backpressure and OOM counts are Redis's INFO errorstats (every client), bulk = "
        "total - the live producer's refusals. A limit fault makes leadsync's limiter "
        "stop every call (live too) for a cooldown (the worker log's 'limiter cooldown')."
    )


def render(
    args: argparse.Namespace, share: int, bulk_budget: int, runs: Sequence[Mapping[str, Any]]
) -> str:
    """The section's body: the setup, the table, the targets, the refusals seen."""
    flush_s = api_settings("soap").flush_interval_s
    return (
        describe(args, share, bulk_budget, flush_s)
        + "\n\n"
        + md_table(HEADERS, [row(r) for r in runs])
        + "\n\n"
        + md_table(
            [
                "run",
                "live p99 (live alone → with the backfill)",
                f"p99 grows by <= one flush interval ({flush_s:g} s)",
                "no OOM",
                "live never refused",
            ],
            target_rows(runs, flush_s),
        )
        + "".join(
            f"\n\n`{r['run']}`: the live producer's first refusal: `Backpressure: "
            f"{r['first_refusal']}`; the backfill was refused "
            f"{r['backpressure_bulk']:,} times (chunks of 1,000, retried after the same wait)."
            for r in runs
            if r["first_refusal"]
        )
        + "".join(highwater_notes(r) for r in runs if r["run"] == "highwater")
    )


def highwater_notes(r: Mapping[str, Any]) -> str:
    """What the backfill and the live producer saw at the high-water mark."""
    live_mark = r["high_water"] * r["maxmemory"]
    bulk_mark = max(r["high_water"] - r["live_memory_reserve"], 0.01) * r["maxmemory"]
    first = (
        f"Redis first answered Backpressure {r['first_refused_s']:.1f} s after the start, at "
        f"{_mb(r['used_at_first_refusal'])} used"
        if r["first_refused_s"] is not None
        else "Redis never answered Backpressure"
    )
    exit_text = {None: "was still retrying when stopped", 75: "gave up (exit 75)"}.get(
        r["backfill_exit"], f"exited {r['backfill_exit']}"
    )
    return (
        f"\n\n`highwater`: maxmemory {_mb(r['maxmemory'])}; bulk refused from "
        f"{_mb(bulk_mark)} ({r['high_water'] - r['live_memory_reserve']:.0%}), live from "
        f"{_mb(live_mark)} ({r['high_water']:.0%}). {first}; peak {_mb(r['peak_used'])}. "
        f"The backfill enqueued {r['bulk_enqueued']:,} of {r['rows']:,} rows, was refused "
        f"{r['backpressure_bulk']:,} times and {exit_text}"
        + (f": `{r['backfill_gave_up'].strip()}`" if r["backfill_gave_up"] else "")
        + f". Live: {r['live_upserts']:,} upserts, {r['live_refusals']:,} refused, "
        f"OOM {r['oom']}. The bulk probe at the end: `{r['bulk_probe'] or '-'}`."
    )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run backfill")
    parser.add_argument("--runs", default=",".join(RUNS), help=",".join(RUNS))
    parser.add_argument("--rows", type=int, default=200_000, help="backfill CSV rows")
    parser.add_argument("--rate", type=float, default=10.0, help="live upserts a second")
    parser.add_argument("--duration-s", type=float, default=120.0, help="live inflow seconds")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes")
    parser.add_argument("--maxmemory-mb", type=int, default=256)
    parser.add_argument(
        "--highwater-maxmemory-mb",
        type=int,
        default=64,
        help="maxmemory of the highwater run (the backfill fills it)",
    )
    parser.add_argument(
        "--highwater-retry-s",
        type=float,
        default=60.0,
        help="the highwater run's backfill --retry-for-s",
    )
    parser.add_argument(
        "--shard-cap",
        type=int,
        default=10_000,
        help="LEADSYNC_MAX_SHARD_BACKLOG of the unthrottled run",
    )
    parser.add_argument(
        "--daily-quota",
        type=int,
        default=None,
        help="LEADSYNC_DAILY_QUOTA (default: 5,000 x rows / 1,000,000, at least 500)",
    )
    parser.add_argument("--latency", type=float, default=0.275)
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--tail-timeout-s", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {','.join(RUNS)}")
    share = args.daily_quota or max(500, round(DEFAULT_SHARE * args.rows / FULL_BACKFILL))
    bulk_budget = max(100, round(DEFAULT_BULK_BUDGET * args.rows / FULL_BACKFILL))
    work = scratch_dir("backfill-csv-")
    csv = work / "leads.csv"
    write_csv(csv, args.rows, args.seed)
    cfg = Config(
        rows=args.rows,
        rate=args.rate,
        duration_s=args.duration_s,
        shards=args.shards,
        concurrency=args.concurrency,
        maxmemory_mb=args.maxmemory_mb,
        highwater_maxmemory_mb=args.highwater_maxmemory_mb,
        highwater_retry_s=args.highwater_retry_s,
        shard_cap=args.shard_cap,
        share=share,
        bulk_budget=bulk_budget,
        latency=args.latency,
        jitter=args.jitter,
        tail_timeout_s=args.tail_timeout_s,
        csv=csv,
        seed=args.seed,
    )
    code = code_version()
    runs: list[dict[str, Any]] = []
    for name in names:
        began = time.monotonic()
        print(f"--- backfill: {name} ({code})", flush=True)
        result = run_one(name, cfg)
        result["wall_s"] = time.monotonic() - began
        runs.append(result)
        shown = {k: v for k, v in result.items() if k != "trace"}
        print(json.dumps(shown, default=str), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"code": code, "runs": runs}, indent=2, default=str))
    body = render(args, share, bulk_budget, runs)
    print(body)
    if not args.no_write:
        write_section("backfill", "backfill", cfg.machine[0], body)
