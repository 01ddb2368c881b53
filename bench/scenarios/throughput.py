"""``throughput``: leadsync against two Celery + zeep baselines, zero-latency simulator,
no limits, backlog first. Also the single and bulk enqueue cost."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.harness import SimProcess, machine_line, md_table, scratch_dir, write_section
from bench.profile import hot_spots
from bench.systems import (
    Measured,
    add_api_argument,
    api_list,
    leadsync_env,
    make_leads,
    run_baseline,
    run_leadsync,
    sim_token_fields,
)
from marketo_sim.embedded import embedded_redis
from producers.contract import Keys, validate_lead
from producers.producer import LeadProducer, Route

UNLIMITED = {
    "latency_s": 0.0,
    "rate_limit_calls": 1_000_000_000,
    "max_concurrent": 1_000_000,
    "daily_quota": 1_000_000_000,
}


@dataclass(frozen=True, slots=True)
class SingleEnqueue:
    upsert_us: list[float]
    xadd_us: list[float]

    @staticmethod
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    @property
    def ratio(self) -> float:
        return statistics.median(self.upsert_us) / statistics.median(self.xadd_us)


def measure_single_enqueue(redis_url: str, samples: int) -> SingleEnqueue:
    """``LeadProducer.upsert`` and a bare ``XADD`` of the same entry, interleaved."""
    leads = make_leads(samples + 200, seed=11)
    bare_route = Route.build(Keys("bare"), 16)
    bare = [bare_route.entry(validate_lead(**lead))[1] for lead in leads]
    client = redis.Redis.from_url(redis_url)
    upsert_us: list[float] = []
    xadd_us: list[float] = []
    with LeadProducer.from_url(redis_url, key_prefix="single", shards=16) as producer:
        for index, (lead, command) in enumerate(zip(leads, bare, strict=True)):
            started = time.perf_counter()
            producer.upsert(**lead)
            middle = time.perf_counter()
            client.execute_command(*command)  # type: ignore[no-untyped-call]
            ended = time.perf_counter()
            if index >= 200:  # warm-up: connections, caches
                upsert_us.append((middle - started) * 1e6)
                xadd_us.append((ended - middle) * 1e6)
    client.close()
    return SingleEnqueue(upsert_us, xadd_us)


def flush(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()


def system_rows(results: Sequence[Measured]) -> list[list[object]]:
    rows: list[list[object]] = []
    for r in results:
        per_call = r.leads_per_call
        rows.append(
            [
                r.system,
                r.api,
                r.concurrency,
                r.leads,
                r.leads_per_s,
                r.drain_leads_per_s,
                r.per_lead_us(r.enqueue_s),
                r.per_lead_us(r.worker_cpu_s),
                r.per_lead_us(r.sim_cpu_s),
                r.per_lead_us(r.redis_cpu_s),
                r.calls,
                r.fewest_calls,
                f"{r.full_calls_share:.0%}",
                f"{per_call.get('mean', 0):.1f} ({per_call.get('min', 0)}-{per_call.get('max', 0)})",
                r.by_protocol,
                r.identity,
                "yes" if r.complete else f"NO {dict(r.statuses)}",
            ]
        )
    return rows


HEADERS = [
    "system",
    "api",
    "worker procs",
    "leads",
    "leads/s end to end",
    "leads/s drain only",
    "enqueue µs/lead",
    "worker CPU µs/lead",
    "simulator CPU µs/lead",
    "redis CPU µs/lead",
    "calls",
    "fewest possible calls",
    "full (300) calls",
    "leads/call mean (min-max)",
    "calls by protocol (sim)",
    "identity calls (tokens issued)",
    "all outcomes stored",
]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run throughput")
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--baseline-a-leads", type=int, default=2_000)
    parser.add_argument("--concurrency", default="2,3,4", help="leadsync worker processes to try")
    parser.add_argument("--baseline-concurrency", type=int, default=4)
    parser.add_argument("--flush-interval", type=float, default=1.0, help="celery-batches, s")
    parser.add_argument("--single-samples", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--big-leads",
        type=int,
        default=100_000,
        help="one more leadsync run at the best concurrency (0: skip)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="one more leadsync run sampled by py-spy"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    add_api_argument(parser)
    args = parser.parse_args(argv)
    apis = api_list(args.api)

    leads = make_leads(args.leads)
    results: list[Measured] = []
    profiles: list[str] = []
    with (
        embedded_redis() as (redis_url, _),
        SimProcess(**UNLIMITED, **sim_token_fields(args)) as sim,
    ):
        machine = machine_line(redis_url)
        single = measure_single_enqueue(redis_url, args.single_samples)
        flush(redis_url)
        envs = {
            api: leadsync_env(
                redis_url,
                sim,
                shards=args.shards,
                api=api,
                rate_limit_calls=1_000_000_000,
                max_concurrent_calls=10_000,
                daily_quota=1_000_000_000,
                flush_interval_s=0.5,
            )
            for api in apis
        }

        def run(
            api: str, batch: Sequence[Mapping[str, Any]], concurrency: int, label: str = "leadsync"
        ) -> None:
            sim.admin.reset()
            results.append(
                run_leadsync(
                    redis_url, sim, batch, concurrency=concurrency, env=envs[api], label=label
                )
            )
            flush(redis_url)
            print(md_table(HEADERS, system_rows(results[-1:])), flush=True)

        # With both APIs the two runs of one size and concurrency go back to back, so
        # they see the same machine.
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for api in apis:
                run(api, leads, concurrency)
        best = {api: best_run(results, api).concurrency for api in apis}
        if args.big_leads:
            big = make_leads(args.big_leads, seed=3)
            for api in apis:
                run(api, big, best[api], label=f"leadsync, {args.big_leads // 1000}k leads")
        if args.profile:
            for api in apis:
                sim.admin.reset()
                samples_path = scratch_dir("profile-") / f"leadsync-{api}.raw"
                run_leadsync(
                    redis_url,
                    sim,
                    make_leads(args.big_leads or args.leads, seed=5),
                    concurrency=best[api],
                    env=envs[api],
                    profile=samples_path,
                )
                flush(redis_url)
                profiles.append(render_profile(samples_path, api if len(apis) > 1 else None))
                print(profiles[-1], flush=True)
        if not args.skip_baselines:
            for batched, count in ((True, args.leads), (False, args.baseline_a_leads)):
                sim.admin.reset()
                results.append(
                    run_baseline(
                        redis_url,
                        sim,
                        leads[:count],
                        batched=batched,
                        concurrency=args.baseline_concurrency,
                        flush_interval_s=args.flush_interval,
                    )
                )
                flush(redis_url)
                print(md_table(HEADERS, system_rows(results[-1:])), flush=True)

    body = render(results, single, apis)
    if profiles:
        body += "\n\n" + "\n\n".join(profiles)
    print(body)
    if not args.no_write:
        write_section("throughput", "throughput", machine, body)


def best_run(results: Sequence[Measured], api: str) -> Measured:
    """The fastest leadsync run of the concurrency sweep for one API."""
    ours = [r for r in results if r.system == "leadsync" and r.api == api]
    return max(ours, key=lambda r: r.leads_per_s)


def render(results: Sequence[Measured], single: SingleEnqueue, apis: Sequence[str]) -> str:
    batches = next((r for r in results if "(b)" in r.system), None)
    single_rows = [
        [
            name,
            statistics.median(values),
            statistics.mean(values),
            SingleEnqueue.p(values, 0.99),
        ]
        for name, values in (
            ("LeadProducer.upsert", single.upsert_us),
            ("bare XADD round trip", single.xadd_us),
        )
    ]
    columns = [target_column(best_run(results, api), single, batches) for api in apis]
    targets = [
        [name, *(cell for column in columns for cell in column[index][1:])]
        for index, (name, *_) in enumerate(columns[0])
    ]
    if len(apis) > 1:
        target_headers = ["target", *(f"{h} ({api})" for api in apis for h in ("measured", "met"))]
    else:
        target_headers = ["target", "measured", "met"]
    if len(apis) > 1:
        bests = ", ".join(f"{api} {best_run(results, api).concurrency}" for api in apis)
        best_line = f"Targets (best leadsync run per API, worker processes: {bests}):"
    else:
        only = best_run(results, apis[0]).concurrency
        best_line = f"Targets (best leadsync run: {only} worker processes):"
    parts = [
        "End to end = first enqueue to last outcome stored; drain only = backlog released "
        "to last outcome. CPU is user+sys of each process tree over the same span."
        + (
            " api = LEADSYNC_MARKETO_API (the baselines speak SOAP through zeep); identity "
            "calls = the simulator's identity endpoint (OAuth token fetches) during the run, "
            "tokens issued in brackets (the simulator hands out the same token until it "
            "expires, and its token outlives the reset between runs)."
            if "rest" in apis
            else ""
        ),
        md_table(HEADERS, system_rows(results)),
    ]
    if len(apis) > 1:
        parts += [
            "REST beside SOAP, the same leads and worker processes, run back to back:",
            md_table(COMPARE_HEADERS, compare_rows(results, apis)),
        ]
    parts += [
        f"Single enqueue, {len(single.upsert_us):,} interleaved samples each (µs):",
        md_table(["call", "median", "mean", "p99"], single_rows),
        best_line,
        md_table(target_headers, targets),
    ]
    return "\n\n".join(parts)


COMPARE_HEADERS = [
    "run",
    "worker procs",
    "leads",
    "worker CPU µs/lead soap / rest",
    "rest / soap",
    "simulator CPU µs/lead soap / rest",
    "leads/s end to end soap / rest",
    "calls soap / rest",
]


def compare_rows(results: Sequence[Measured], apis: Sequence[str]) -> list[list[object]]:
    soap = [r for r in results if r.api == apis[0] and not r.system.startswith("baseline")]
    rest = [r for r in results if r.api == apis[1]]
    rows: list[list[object]] = []
    for s_run in soap:
        r_run = next(
            (
                r
                for r in rest
                if r.system == s_run.system
                and r.concurrency == s_run.concurrency
                and r.leads == s_run.leads
            ),
            None,
        )
        if r_run is None:
            continue
        s_cpu, r_cpu = s_run.per_lead_us(s_run.worker_cpu_s), r_run.per_lead_us(r_run.worker_cpu_s)
        rows.append(
            [
                s_run.system,
                s_run.concurrency,
                s_run.leads,
                f"{s_cpu:.1f} / {r_cpu:.1f}",
                f"{r_cpu / s_cpu:.2f}x" if s_cpu else "-",
                f"{s_run.per_lead_us(s_run.sim_cpu_s):.1f} / {r_run.per_lead_us(r_run.sim_cpu_s):.1f}",
                f"{s_run.leads_per_s:,.0f} / {r_run.leads_per_s:,.0f}",
                f"{s_run.calls} / {r_run.calls}",
            ]
        )
    return rows


def target_column(
    best: Measured, single: SingleEnqueue, batches: Measured | None
) -> list[list[object]]:
    """(target, measured, met) for one API's best run."""
    per_call = best.leads_per_call
    targets: list[list[object]] = []
    if batches is not None:
        speedup = best.leads_per_s / batches.leads_per_s
        targets.append(["end to end >= 15x baseline (b)", f"{speedup:.1f}x", _met(speedup >= 15)])
    cpu_us = best.per_lead_us(best.worker_cpu_s)
    bulk_us = best.per_lead_us(best.enqueue_s)
    fill = per_call.get("mean", 0) / 300
    targets += [
        ["worker CPU <= 100 µs/lead", f"{cpu_us:.0f} µs", _met(cpu_us <= 100)],
        [
            "single enqueue <= 1.3x bare XADD (medians)",
            f"{single.ratio:.2f}x",
            _met(single.ratio <= 1.3),
        ],
        ["bulk enqueue <= 25 µs/lead", f"{bulk_us:.1f} µs", _met(bulk_us <= 25)],
        ["leads/call >= 99% of 300 under a backlog", f"{fill:.1%}", _met(fill >= 0.99)],
        [
            "calls at the full 300 (the cap is met except for each shard's tail)",
            f"{best.full_calls_share:.0%} ({best.calls} calls, fewest possible {best.fewest_calls})",
            "(context)",
        ],
    ]
    return targets


def render_profile(samples_path: Path, api: str | None = None) -> str:
    total, functions, libraries = hot_spots(samples_path)
    if not total:
        return "py-spy recorded no samples."
    over = f" over {api.upper()}" if api else ""
    return "\n\n".join(
        [
            f"Where the leadsync worker's CPU goes{over}: py-spy, {total:,} samples of busy threads "
            "in a separate run (its figures are not in the table above). Each sample is "
            "charged to the innermost leadsync function on its stack (library calls "
            "included), and separately to the library of the frame that was running.",
            md_table(
                ["innermost leadsync function", "share"],
                [[f.replace("|", "/"), f"{n / total:.1%}"] for f, n in functions],
            ),
            md_table(["running library", "share"], [[n, f"{c / total:.1%}"] for n, c in libraries]),
        ]
    )


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
