"""``marketo-bound``: Marketo's own limits bind (1 s per call, 100 calls / 20 s, 10 in
flight) and leadsync is given the same budget. How much of the budget does it use?"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench import calls as calllog
from bench.harness import SimProcess, machine_line, md_table, write_section
from bench.systems import (
    add_api_argument,
    api_list,
    leadsync_env,
    make_leads,
    run_leadsync,
    sim_token_fields,
)
from marketo_sim.embedded import embedded_redis

RATE_CALLS = 100
WINDOW_S = 20.0
CONCURRENT = 10


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run marketo-bound")
    parser.add_argument("--leads", type=int, default=120_000)
    parser.add_argument("--concurrency", type=int, default=CONCURRENT, help="worker processes")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--skip-s", type=float, default=10.0, help="ramp-up left out")
    parser.add_argument("--steady-s", type=float, default=60.0, help="window measured")
    parser.add_argument("--no-write", action="store_true")
    add_api_argument(parser)
    args = parser.parse_args(argv)
    apis = api_list(args.api)

    machine = ""
    columns: list[list[tuple[str, object, str, str]]] = []
    for api in apis:
        print(f"--- marketo-bound, {api}", flush=True)
        machine, column = measure(api, args)
        columns.append(column)
        print(md_table(["measure", "value", "reference", "target met"], column), flush=True)
    if len(apis) > 1:
        headers = ["measure", *apis, "reference", *(f"met ({api})" for api in apis)]
    else:
        headers = ["measure", "value", "reference", "target met"]
    rows = [
        [
            name,
            *(column[index][1] for column in columns),
            reference,
            *(column[index][3] for column in columns),
        ]
        for index, (name, _, reference, _) in enumerate(columns[0])
    ]
    body = (
        f"Simulator: 1 s per call, {RATE_CALLS} calls / {WINDOW_S:g} s, {CONCURRENT} in flight. "
        f"leadsync: LEADSYNC_RATE_LIMIT_CALLS={RATE_CALLS}, LEADSYNC_RATE_LIMIT_WINDOW_S={WINDOW_S:g}, "
        f"LEADSYNC_MAX_CONCURRENT_CALLS={CONCURRENT}, {args.concurrency} worker processes, "
        f"{args.shards} shards, {args.leads:,} leads enqueued first. Window: "
        f"{args.steady_s:g} s starting {args.skip_s:g} s after the first call."
        + (
            f" One run per API ({', '.join(apis)}, in that order), each with its own Redis "
            "and simulator; rest = LEADSYNC_MARKETO_API=rest (Sync Leads, one OAuth token "
            "shared through Redis); identity calls = the simulator's identity endpoint, "
            "tokens issued in brackets."
            if "rest" in apis
            else ""
        )
        + "\n\n"
        + md_table(headers, rows)
    )
    print(body)
    if not args.no_write:
        write_section("marketo-bound", "marketo-bound", machine, body)


def measure(api: str, args: argparse.Namespace) -> tuple[str, list[tuple[str, object, str, str]]]:
    """One run of the scenario over ``api``: the machine line and (measure, value,
    reference, target met) rows."""
    sim_limits = {
        "latency_s": 1.0,
        "rate_limit_calls": RATE_CALLS,
        "rate_window_s": WINDOW_S,
        "max_concurrent": CONCURRENT,
        "daily_quota": 1_000_000,
        **sim_token_fields(args),
    }
    with embedded_redis() as (redis_url, _), SimProcess(**sim_limits) as sim:
        machine = machine_line(redis_url)
        env = leadsync_env(
            redis_url,
            sim,
            shards=args.shards,
            api=api,
            rate_limit_calls=RATE_CALLS,
            rate_limit_window_s=WINDOW_S,
            max_concurrent_calls=CONCURRENT,
            daily_quota=1_000_000,
            flush_interval_s=2.0,
        )
        measured = run_leadsync(
            redis_url,
            sim,
            make_leads(args.leads),
            concurrency=args.concurrency,
            env=env,
            timeout_s=1200,
        )
        log = sim.admin.calls()
    first = min(c["start"] for c in log)
    start, end = first + args.skip_s, first + args.skip_s + args.steady_s
    last_start = max(c["start"] for c in log)
    if end > last_start:
        print(f"warning: the backlog ran out {end - last_start:.0f} s before the window ended")
    steady = calllog.window(log, start, end)
    budget = RATE_CALLS * args.steady_s / WINDOW_S
    counts = calllog.sliding_counts(log, start, end, WINDOW_S)
    faults = measured.summary.get("faults_by_code", {})
    # SOAP's 20023/20024 and REST's 606/615: a call the simulator refused over a limit.
    limit_codes = ("20023", "20024") if api == "soap" else ("606", "615")
    limit_faults = sum(int(faults.get(code, 0)) for code in limit_codes)
    other_faults = {k: v for k, v in faults.items() if k not in limit_codes}
    rows: list[tuple[str, object, str, str]] = [
        (
            f"calls started in the {args.steady_s:g} s window",
            steady.calls,
            f"budget {budget:g}",
            _met(steady.calls >= 0.95 * budget),
        ),
        ("share of the call budget used (target >= 95%)", f"{steady.calls / budget:.1%}", "", ""),
        (
            "calls per sliding 20 s window (min / max)",
            f"{min(counts)} / {max(counts)}",
            f"limit {RATE_CALLS}",
            "",
        ),
        (
            "leads per call in the window (target >= 99% of 300)",
            f"{steady.leads_per_call:.1f} ({steady.leads_per_call / 300:.1%})",
            "",
            _met(steady.leads_per_call >= 0.99 * 300),
        ),
        (
            "calls started per 5 s in the window",
            " ".join(str(n) for n in calllog.bucket_counts(log, start, end, 5.0)),
            "even pacing: 25",
            "",
        ),
        (
            "leads/s in the window",
            steady.leads_per_s,
            f"ceiling {RATE_CALLS * 300 / WINDOW_S:g}",
            "",
        ),
        ("mean calls in flight in the window", steady.mean_in_flight, f"limit {CONCURRENT}", ""),
        (
            "limit faults provoked (SOAP 20023 + 20024, REST 606 + 615; whole run)",
            limit_faults,
            "target 0",
            _met(limit_faults == 0),
        ),
        (
            "other faults by code (whole run)",
            ", ".join(f"{k} {v}" for k, v in sorted(other_faults.items())) or "none",
            "",
            "",
        ),
        (
            "max calls in flight / in any 20 s (sim, whole run)",
            f"{measured.summary.get('max_concurrency')} / {measured.summary.get('max_calls_in_window')}",
            "",
            "",
        ),
        (
            "whole run: leads, calls, leads/call, drain time",
            f"{measured.leads:,}, {measured.calls}, {measured.leads_per_call.get('mean', 0):.1f}, "
            f"{measured.drain_s:.0f} s",
            "",
            "yes" if measured.complete else f"NO {dict(measured.statuses)}",
        ),
        (
            "worker CPU µs/lead (10 processes' trees, whole drain)",
            f"{measured.per_lead_us(measured.worker_cpu_s):.1f}",
            "",
            "",
        ),
        ("calls by protocol (sim)", measured.by_protocol, "", ""),
        ("identity calls (tokens issued)", measured.identity, "", ""),
    ]
    return machine, rows


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
