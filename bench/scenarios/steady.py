"""``steady``: a steady inflow of R leads/s for D seconds with leadsync's DEFAULT settings
(16 shards, the default flush interval, 50 calls / 20 s, 5 in flight, a 10,000-call daily
quota), only the endpoint and what a bench must set changed, against a simulator that
answers in about 300 ms. What does the inflow cost in calls a day (the quota is shared by
every integration), how full are the calls, and how long does a lead wait?

One run per ``--runs`` item: ``R`` (R leads/s, every lead a new person) or ``RxP`` (R
leads/s over P people, picked at random, so some are upserted again while queued). Each
run has its own redis-server, simulator and worker, a producer thread pacing single
upserts evenly (``LeadProducer.upsert``; ``upsert_many`` only to catch up when it fell
behind), and the bench sending the beat tick. After the inflow stops the tail is drained
(``--tail-timeout-s``); latency is each outcome's ``finished_at`` minus its enqueue time
(the request id's entry time, Redis's clock).

``--save FILE`` keeps the runs as JSON; ``--baseline FILE`` (saved by a run on another
tree) puts those runs beside this tree's in the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    ROOT,
    WORKDIR,
    SimProcess,
    code_version,
    command_line,
    machine_line,
    md_table,
    write_section,
)
from bench.systems import (
    LEADSYNC_PREFIX,
    Ticker,
    add_api_argument,
    api_list,
    backlog,
    identity_cell,
    leadsync_env,
    leadsync_worker,
    protocol_cell,
    sim_token_fields,
)
from marketo_sim.embedded import embedded_redis
from producers.contract import Keys, entry_time_s, parse_request_id
from producers.producer import LeadProducer
from worker.settings import Settings

FIRST_NAMES = ("Ana", "Bo", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jun")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne")
BATCH_CAP = 300
DEFAULT_RUNS = "1,10,100,1000,10x1000"


# --- the inflow -------------------------------------------------------------------------


def parse_run(text: str) -> tuple[float, int | None]:
    """``"10"`` -> (10.0, None); ``"10x1000"`` -> (10.0, 1000)."""
    rate, _, people = text.strip().partition("x")
    return float(rate), (int(people) if people else None)


def run_name(rate: float, people: int | None) -> str:
    shown = f"{rate:g} leads/s"
    return f"{shown}, {people:,} people" if people else f"{shown}, distinct people"


class Inflow(threading.Thread):
    """Upserts paced evenly at ``rate`` per second: lead k is due at start + k / rate."""

    def __init__(
        self,
        producer: LeadProducer,
        *,
        rate: float,
        duration_s: float,
        people: int | None,
        seed: int,
    ) -> None:
        super().__init__(daemon=True, name="inflow")
        self.producer = producer
        self.rate = rate
        self.total = max(1, round(rate * duration_s))
        self.people = people
        self.rng = random.Random(seed)
        self.ids: list[str] = []
        self.refused = 0
        self.catch_ups = 0  # times more than one lead was due at once (upsert_many)
        self.most_late = 0
        self.span_s = 0.0
        self.error: BaseException | None = None

    def lead(self, index: int) -> dict[str, Any]:
        person = index if self.people is None else self.rng.randrange(self.people)
        return {
            "email": f"person{person}@steady.example.com",
            "attributes": {
                "FirstName": self.rng.choice(FIRST_NAMES),
                "Company": self.rng.choice(COMPANIES),
                "Phone": f"650-555-{self.rng.randrange(10_000):04d}",
            },
        }

    def run(self) -> None:
        try:
            start = time.monotonic()
            sent = 0
            while sent < self.total:
                due = min(self.total, int((time.monotonic() - start) * self.rate) + 1)
                count = due - sent
                if count <= 0:
                    time.sleep(max(0.0, start + sent / self.rate - time.monotonic()))
                    continue
                records = [self.lead(sent + k) for k in range(count)]
                if count == 1:
                    self.ids.append(self.producer.upsert(**records[0]))
                else:
                    self.catch_ups += 1
                    self.most_late = max(self.most_late, count)
                    for result in self.producer.upsert_many(records):
                        if isinstance(result, str):
                            self.ids.append(result)
                        else:
                            self.refused += 1
                sent = due
            self.span_s = time.monotonic() - start
        except BaseException as exc:  # reported by the main thread
            self.error = exc


# --- one run ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def pace_headroom(client: redis.Redis, settings: Settings) -> float | None:
    """Partial-batch calls the quota pace would allow right now ahead of its line (None
    where the tree has no pace)."""
    try:
        from worker.limits import LimiterKeys, next_quota_reset, quota_day, quota_day_length_s
    except ImportError:
        return None
    burst = getattr(settings, "pace_burst_calls", None)
    if burst is None:
        return None
    now = time.time()
    tz = settings.quota_timezone
    length = quota_day_length_s(now, tz)
    day_start = next_quota_reset(now, tz) - length
    used = int(client.get(LimiterKeys(settings.key_prefix).quota(quota_day(now, tz))) or 0)
    return settings.daily_quota * (now - day_start) / length + burst - used


def seed_quota_at_pace(client: redis.Redis, settings: Settings) -> int:
    """Set today's quota counter to the pace line plus the burst: the state after a day
    whose inflow needed more partial calls than the pace allows (burst spent)."""
    from worker.limits import LimiterKeys, next_quota_reset, quota_day, quota_day_length_s

    now = time.time()
    tz = settings.quota_timezone
    length = quota_day_length_s(now, tz)
    reset = next_quota_reset(now, tz)
    allowed = settings.daily_quota * (now - (reset - length)) / length
    used = math.ceil(allowed + getattr(settings, "pace_burst_calls", 0))
    key = LimiterKeys(settings.key_prefix).quota(quota_day(now, tz))
    client.set(key, used, ex=int(reset - now) + 120)
    return used


#: Marketo's default daily quota per protocol (the simulator's own default is SOAP's).
SIM_DAILY_QUOTA = {"soap": 10_000, "rest": 50_000}


def api_settings(api: str, **overrides: object) -> Settings:
    """leadsync's settings for ``api`` with every default left alone (REST: the credentials
    it cannot do without, placeholders unless given)."""
    if api == "rest":
        overrides = {
            "marketo_api": "rest",
            "marketo_rest_url": "http://127.0.0.1",
            "marketo_client_id": "bench",
            "marketo_client_secret": "bench",
            **overrides,
        }
    return Settings.from_env(**overrides)


def run_one(
    rate: float,
    people: int | None,
    api: str,
    args: argparse.Namespace,
    machine: list[str],
) -> dict[str, Any]:
    sim_config = {
        "latency_s": args.latency,
        "latency_jitter_s": args.jitter,
        "seed": args.seed,
        "daily_quota": SIM_DAILY_QUOTA[api],
        **sim_token_fields(args),
    }
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        if not machine:
            machine.append(machine_line(redis_url))
        env = leadsync_env(redis_url, sim, shards=args.shards, api=api)
        env["LEADSYNC_LOG_LEVEL"] = args.log_level  # drain reports, for reading the log
        rest = (
            {
                "marketo_rest_url": env["LEADSYNC_MARKETO_REST_URL"],
                "marketo_client_id": env["LEADSYNC_MARKETO_CLIENT_ID"],
                "marketo_client_secret": env["LEADSYNC_MARKETO_CLIENT_SECRET"],
            }
            if api == "rest"
            else {}
        )
        settings = api_settings(api, redis_url=redis_url, key_prefix=LEADSYNC_PREFIX, **rest)
        client = redis.Redis.from_url(redis_url)
        keys = Keys(LEADSYNC_PREFIX)
        seeded = seed_quota_at_pace(client, settings) if args.quota_at_pace else None
        headroom = pace_headroom(client, settings)
        worker = leadsync_worker(env, args.concurrency)
        samples: list[int] = []
        try:
            worker.start()
            worker.wait_ready()
            with (
                LeadProducer.from_url(
                    redis_url, key_prefix=LEADSYNC_PREFIX, shards=args.shards
                ) as producer,
                Ticker(env),
            ):
                inflow = Inflow(
                    producer,
                    rate=rate,
                    duration_s=args.duration_s,
                    people=people,
                    seed=args.seed,
                )
                cpu_start = worker.cpu_s()
                started = time.time()
                inflow.start()
                while inflow.is_alive():
                    worker.check_alive()
                    samples.append(backlog(client, keys, args.shards))
                    inflow.join(timeout=1.0)
                if inflow.error is not None:
                    raise inflow.error
                inflow_end = time.time()
                deadline = time.monotonic() + args.tail_timeout_s
                while (left := backlog(client, keys, args.shards)) and time.monotonic() < deadline:
                    worker.check_alive()
                    samples.append(left)
                    time.sleep(0.5)
                tail_s = time.time() - inflow_end
                worker_cpu_s = worker.cpu_s() - cpu_start
                run_span_s = time.time() - started
                left = backlog(client, keys, args.shards)
                outcomes = []
                for start in range(0, len(inflow.ids), 2000):
                    outcomes.extend(producer.outcomes(inflow.ids[start : start + 2000]))
        finally:
            worker.stop()
            client.close()
        log = sim.admin.calls()
        summary = sim.admin.summary()

    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    for request, outcome in zip(inflow.ids, outcomes, strict=True):
        if outcome is None:
            statuses["UNKNOWN"] += 1
            continue
        statuses[outcome.status.value] += 1
        if outcome.status.value != "PENDING" and outcome.finished_at is not None:
            enqueued = outcome.enqueued_at or entry_time_s(parse_request_id(request)[1])
            latencies.append(outcome.finished_at - enqueued)
    latencies.sort()
    ok_sizes = [int(c["leads"]) for c in log if c["outcome"] == "ok"]
    steady_from = started + args.warmup_s
    steady_calls = sum(1 for c in log if steady_from <= c["start"] < inflow_end)
    steady_span = max(inflow_end - steady_from, 1e-9)
    calls = len(log)
    finished_upserts = sum(n for s, n in statuses.items() if s not in ("PENDING", "UNKNOWN"))
    quota = settings.daily_quota
    flush = settings.flush_interval_s
    ideal = min(BATCH_CAP, rate * max(flush, 86_400 / quota))
    faults = summary.get("faults_by_code", {})
    identity = summary.get("identity") or {}
    return {
        "run": run_name(rate, people),
        "api": api,
        "rate": rate,
        "people": people,
        "duration_s": args.duration_s,
        "inflow_span_s": inflow.span_s,
        "upserts": len(inflow.ids),
        "refused": inflow.refused,
        "catch_ups": inflow.catch_ups,
        "most_late": inflow.most_late,
        "calls": calls,
        "calls_ok": len(ok_sizes),
        "call_outcomes": dict(Counter(c["outcome"] for c in log)),
        "faults_by_code": faults,
        "records_sent_ok": sum(ok_sizes),
        "leads_per_call": sum(ok_sizes) / len(ok_sizes) if ok_sizes else 0.0,
        "upserts_per_call": finished_upserts / calls if calls else 0.0,
        "call_size_min": min(ok_sizes, default=0),
        "call_size_median": sorted(ok_sizes)[len(ok_sizes) // 2] if ok_sizes else 0,
        "call_size_max": max(ok_sizes, default=0),
        "full_calls": sum(1 for n in ok_sizes if n >= BATCH_CAP),
        "projected_calls_per_day": calls / args.duration_s * 86_400,
        "steady_calls_per_day": steady_calls / steady_span * 86_400,
        "steady_window_s": steady_span,
        "full_batch_calls_per_day": rate * 86_400 / BATCH_CAP,
        "quota": quota,
        "flush_interval_s": flush,
        "ideal_leads_per_call": ideal,
        "p50_s": percentile(latencies, 0.50),
        "p99_s": percentile(latencies, 0.99),
        "max_s": latencies[-1] if latencies else None,
        "statuses": dict(statuses),
        "unfinished": statuses.get("PENDING", 0) + statuses.get("UNKNOWN", 0),
        "backlog_left": left,
        "max_backlog": max(samples, default=0),
        "tail_s": tail_s,
        "pace_headroom_at_start": headroom,
        "quota_seeded_at": seeded,
        "max_in_flight_sim": summary.get("max_concurrency"),
        "calls_by_protocol": summary.get("calls_by_protocol", {}),
        "identity": identity,
        "identity_calls_per_hour": int(identity.get("calls", 0)) / run_span_s * 3600,
        "worker_cpu_s": worker_cpu_s,
        "worker_cpu_us_per_upsert": worker_cpu_s / len(inflow.ids) * 1e6 if inflow.ids else 0.0,
        "run_span_s": run_span_s,
        "worker_processes": args.concurrency,
        "max_calls_in_20s_sim": summary.get("max_calls_in_window"),
        "worker_log": str(WORKDIR / f"{worker.name}.log"),
        # (start s after the first upsert, leads, outcome or fault code) of every call
        "call_log": [
            (round(c["start"] - started, 3), int(c["leads"]), c["fault_code"] or c["outcome"])
            for c in log
        ],
    }


# --- tables ---------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def run_row(code: str, r: Mapping[str, Any]) -> list[object]:
    lpc = r["upserts_per_call"]
    api = r.get("api", "soap")
    cpu = r.get("worker_cpu_us_per_upsert")
    return [
        r["run"],
        api,
        code,
        r["calls"],
        f"{lpc:.1f}" + (f" ({r['leads_per_call']:.1f})" if r["people"] else ""),
        f"{r['ideal_leads_per_call']:g}",
        f"{lpc / r['ideal_leads_per_call']:.0%}" if r["ideal_leads_per_call"] else "-",
        f"{r['call_size_min']} / {r['call_size_median']} / {r['call_size_max']}",
        f"{r['projected_calls_per_day']:,.0f}",
        f"{r['steady_calls_per_day']:,.0f}",
        f"{r['full_batch_calls_per_day']:,.0f}",
        _s(r["p50_s"]),
        _s(r["p99_s"]),
        ", ".join(f"{k} {v:,}" for k, v in sorted(r["statuses"].items())),
        f"{r['tail_s']:.0f} s" + ("" if not r["backlog_left"] else f", {r['backlog_left']:,} left"),
        "-" if cpu is None else f"{cpu:,.0f}",
        protocol_cell(r),
        identity_cell(r) if api == "rest" else "-",
    ]


HEADERS = [
    "inflow",
    "api",
    "code",
    "calls",
    "upserts/call (records/call)",
    "ideal",
    "of ideal",
    "call size min / median / max",
    "projected calls/day",
    "calls/day, steady window",
    "full-batch cost/day",
    "p50",
    "p99",
    "outcomes",
    "tail drain",
    "worker CPU µs/upsert (inflow + tail)",
    "calls by protocol (sim)",
    "identity calls (tokens issued)",
]


def target_rows(code: str, runs: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for r in runs:
        fits = r["full_batch_calls_per_day"] <= r["quota"]
        share = r["upserts_per_call"] / r["ideal_leads_per_call"]
        ten = r["rate"] == 10 and not r["people"]
        rows.append(
            [
                r["run"],
                r.get("api", "soap"),
                code,
                (
                    f"{r['projected_calls_per_day']:,.0f} <= {r['quota']:,}: "
                    + ("yes" if r["projected_calls_per_day"] <= r["quota"] else "**no**")
                )
                if fits
                else "n/a (full batches alone cost more)",
                f"{share:.0%}: " + ("yes" if share >= 0.95 else "**no**"),
                (
                    f"{r['projected_calls_per_day']:,.0f} calls/day, p99 {_s(r['p99_s'])}: "
                    + (
                        "yes"
                        if r["projected_calls_per_day"] <= 2880
                        and r["p99_s"] is not None
                        and r["p99_s"] <= 60
                        and not r["unfinished"]
                        else "**no**"
                    )
                )
                if ten
                else "",
            ]
        )
    return rows


def render(runs: Sequence[Mapping[str, Any]], code: str, baseline: Mapping[str, Any] | None) -> str:
    old_runs = {_key(r): r for r in baseline["runs"]} if baseline else {}
    old_code = baseline["code"] if baseline else ""
    rows: list[list[object]] = []
    targets: list[list[object]] = []
    seen: set[tuple[str, str]] = set()
    for r in runs:
        if _key(r) in old_runs:
            rows.append(run_row(old_code, old_runs[_key(r)]))
            targets.extend(target_rows(old_code, [old_runs[_key(r)]]))
        rows.append(run_row(code, r))
        targets.extend(target_rows(code, [r]))
        seen.add(_key(r))
    for name, r in old_runs.items():
        if name not in seen:
            rows.append(run_row(old_code, r))
            targets.extend(target_rows(old_code, [r]))
    return (
        md_table(HEADERS, rows)
        + "\n\n"
        + md_table(
            [
                "inflow",
                "api",
                "code",
                "calls/day <= quota (where full batches fit it)",
                "upserts/call >= 95% of ideal",
                "10 leads/s: <= 2,880 calls/day and p99 <= 60 s",
            ],
            targets,
        )
    )


def _key(r: Mapping[str, Any]) -> tuple[str, str]:
    return r["run"], r.get("api", "soap")


def describe(args: argparse.Namespace, settings: Settings, apis: Sequence[str] = ("soap",)) -> str:
    quotas = " / ".join(f"{api_settings(api).daily_quota:,} ({api})" for api in apis)
    return (
        f"leadsync defaults: {args.shards} shards, LEADSYNC_FLUSH_INTERVAL_S="
        f"{settings.flush_interval_s:g}, {settings.rate_limit_calls} calls / "
        f"{settings.rate_limit_window_s:g} s, {settings.max_concurrent_calls} in flight, daily quota "
        f"{quotas if len(apis) > 1 else f'{settings.daily_quota:,}'}; "
        f"{args.concurrency} worker processes, the bench sends the tick "
        f"every second. Simulator: {args.latency:g} s per call (+ up to {args.jitter:g} s), "
        f"Marketo's default limits. Inflow {args.duration_s:g} s per run, single upserts paced "
        "evenly; ideal upserts/call = min(300, R x max(flush interval, 86,400 / quota)); "
        "projected calls/day = calls / inflow seconds x 86,400 (tail calls included); the "
        f"steady window starts {args.warmup_s:g} s after the first upsert and ends with the inflow; "
        "latency = outcome finished_at - enqueue time; records/call (in brackets) counts "
        "coalesced records as Marketo saw them."
        + (" Quota counter seeded at the pace line + burst." if args.quota_at_pace else "")
        + (
            " api = LEADSYNC_MARKETO_API; REST runs give the simulator REST's default daily "
            "quota (50,000) and leadsync only the REST base URL and client credentials. "
            "Worker CPU = user+sys of the worker's process tree from the first upsert to "
            "the end of the tail drain (idle ticks included), per upsert; identity calls = "
            "the simulator's identity endpoint during the run (tokens issued in brackets)."
            if "rest" in apis
            else " Worker CPU = user+sys of the worker's process tree from the first upsert "
            "to the end of the tail drain (idle ticks included), per upsert."
        )
    )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run steady")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="R or RxPEOPLE, comma-separated")
    parser.add_argument("--duration-s", type=float, default=180.0, help="inflow seconds (D)")
    parser.add_argument("--people", type=int, default=None, help="people for runs without x")
    parser.add_argument("--latency", type=float, default=0.275)
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes")
    parser.add_argument("--tail-timeout-s", type=float, default=300.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument(
        "--quota-at-pace",
        action="store_true",
        help="seed today's quota counter at the pace line + burst (new code only)",
    )
    parser.add_argument("--log-level", default="INFO", help="the workers' LEADSYNC_LOG_LEVEL")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--save", type=Path, help="write the runs as JSON here")
    parser.add_argument("--baseline", type=Path, help="JSON of runs on another tree")
    parser.add_argument("--no-write", action="store_true")
    add_api_argument(parser)
    args = parser.parse_args(argv)
    apis = api_list(args.api)

    settings = api_settings(apis[0])
    code = code_version()
    machine: list[str] = []
    runs: list[dict[str, Any]] = []
    for item in args.runs.split(","):
        rate, people = parse_run(item)
        people = people if people is not None else args.people
        for api in apis:  # with both, the two protocols' runs of one inflow back to back
            began = time.monotonic()
            print(f"--- {run_name(rate, people)}, {api} ({code})", flush=True)
            result = run_one(rate, people, api, args, machine)
            result["wall_s"] = time.monotonic() - began
            runs.append(result)
            shown = {k: v for k, v in result.items() if k != "call_log"}
            print(json.dumps(shown, indent=None, default=str), flush=True)
            if args.save:
                args.save.write_text(json.dumps(_saved(runs, code, args), indent=2))
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    body = describe(args, settings, apis) + "\n\n" + render(runs, code, baseline)
    print(body)
    if not args.no_write:
        write_section("steady", "steady", machine[0], body)


def _saved(
    runs: Sequence[Mapping[str, Any]], code: str, args: argparse.Namespace
) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "code": code,
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": list(runs),
    }
