"""``latency``: the simulator answers after 1 s, no limits; N calls allowed in flight
(LEADSYNC_MAX_CONCURRENT_CALLS=N, N worker processes) should give about N x 300 leads/s."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench import calls as calllog
from bench.harness import SimProcess, machine_line, md_table, write_section
from bench.scenarios.throughput import UNLIMITED, flush
from bench.systems import leadsync_env, make_leads, run_leadsync
from marketo_sim.embedded import embedded_redis

HEADERS = [
    "N in flight allowed",
    "shards",
    "leads",
    "calls",
    "leads/call",
    "leads/s whole drain",
    "leads/s steady (middle 80%)",
    "N x 300",
    "steady / (N x 300)",
    "mean calls in flight (steady)",
    "max calls in flight (sim)",
    "all outcomes stored",
]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run latency")
    parser.add_argument("--n", default="1,2,5,10", help="calls in flight to try")
    parser.add_argument("--seconds", type=float, default=20.0, help="busy time to aim for")
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        "--shards-per-call", type=int, default=2, help="shards = this x N (at least 4)"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    rows: list[list[object]] = []
    with embedded_redis() as (redis_url, _), SimProcess(**UNLIMITED) as sim:
        machine = machine_line(redis_url)
        sim.configure(latency_s=args.latency)
        for n in [int(v) for v in args.n.split(",")]:
            shards = max(4, args.shards_per_call * n)
            count = int(n * 300 * args.seconds / args.latency)
            env = leadsync_env(
                redis_url,
                sim,
                shards=shards,
                rate_limit_calls=1_000_000_000,
                max_concurrent_calls=n,
                daily_quota=1_000_000_000,
                flush_interval_s=0.5,
            )
            sim.admin.reset()
            measured = run_leadsync(
                redis_url, sim, make_leads(count), concurrency=n, env=env, timeout_s=600
            )
            flush(redis_url)
            log = sim.admin.calls()
            total, steady = calllog.whole(log), calllog.middle(log)
            rows.append(
                [
                    n,
                    shards,
                    count,
                    measured.calls,
                    total.leads_per_call,
                    total.leads_per_s,
                    steady.leads_per_s,
                    n * 300,
                    f"{steady.leads_per_s / (n * 300):.0%}",
                    steady.mean_in_flight,
                    int(measured.summary.get("max_concurrency", 0)),
                    "yes" if measured.complete else f"NO {dict(measured.statuses)}",
                ]
            )
            print(md_table(HEADERS, rows[-1:]), flush=True)
    body = (
        f"Simulator latency {args.latency:g} s per call, no limits. leadsync: "
        "LEADSYNC_MAX_CONCURRENT_CALLS=N, N worker processes, backlog enqueued first. "
        "Rates come from the simulator's call log: whole drain = first call start to last "
        "call end; steady = calls started in the middle 80% of the span between first and "
        "last call start (ramp-up and each shard's partial tail batch left out).\n\n"
        + md_table(HEADERS, rows)
    )
    print(body)
    if not args.no_write:
        write_section("latency", "latency", machine, body)
