"""``soak``: a large backlog through injected faults (502, truncated bodies, 10001, 20011,
short hangs) while worker process groups are SIGKILLed and restarted. Nothing may be lost
and Marketo's limits may never be crossed."""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Sequence

import redis

from bench.harness import SimProcess, machine_line, md_table, write_section
from bench.systems import (
    Ticker,
    backlog,
    leadsync_env,
    leadsync_worker,
    make_leads,
    outcome_statuses,
)
from marketo_sim.embedded import embedded_redis
from producers.contract import Keys
from producers.producer import LeadProducer

FAULTS = {
    "fault_http_502_rate": 0.05,
    "fault_truncated_rate": 0.04,
    "fault_internal_10001_rate": 0.04,
    "fault_internal_20011_rate": 0.04,
    "fault_hang_rate": 0.03,
}
#: Call outcomes after which the simulator had applied the upsert.
APPLIED = ("ok", "truncated", "hang")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run soak")
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="worker process groups")
    parser.add_argument("--concurrency", type=int, default=5, help="processes per group")
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--kill-window", default="10,60", help="seconds after release, from,to")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--hang-s", type=float, default=4.0)
    parser.add_argument("--request-timeout-s", type=float, default=3.0)
    parser.add_argument("--lease-ttl-s", type=float, default=15.0)
    parser.add_argument("--rate-calls", type=int, default=100, help="leadsync's, per 20 s")
    parser.add_argument("--max-concurrent", type=int, default=10, help="leadsync's")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=1500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    sim_config = {
        "latency_s": args.latency,
        "latency_jitter_s": args.latency / 2,
        "daily_quota": 1_000_000,
        "hang_s": args.hang_s,
        "seed": args.seed,
        **FAULTS,
    }  # Marketo's limits stay at their defaults: 100 calls / 20 s, 10 in flight
    leads = make_leads(args.leads, seed=args.seed)
    kill_from, kill_to = (float(v) for v in args.kill_window.split(","))
    kill_at = sorted(rng.uniform(kill_from, kill_to) for _ in range(args.kills))
    kills: list[str] = []
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        machine = machine_line(redis_url)
        env = leadsync_env(
            redis_url,
            sim,
            shards=args.shards,
            rate_limit_calls=args.rate_calls,
            rate_limit_window_s=20,
            max_concurrent_calls=args.max_concurrent,
            daily_quota=1_000_000,
            flush_interval_s=1.0,
            request_timeout_s=args.request_timeout_s,
            lease_ttl_s=args.lease_ttl_s,
            # The lease must outlast a call plus three Redis commands (settings check).
            redis_socket_timeout_s=3,
        )
        client = redis.Redis.from_url(redis_url)
        keys = Keys(env["LEADSYNC_KEY_PREFIX"])
        workers = [leadsync_worker(env, args.concurrency) for _ in range(args.workers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        try:
            with LeadProducer.from_url(
                redis_url, key_prefix=env["LEADSYNC_KEY_PREFIX"], shards=args.shards
            ) as producer:
                started = time.perf_counter()
                ids = [r for r in producer.upsert_many(leads) if isinstance(r, str)]
                enqueue_s = time.perf_counter() - started
                with Ticker(env):
                    released = time.monotonic()
                    deadline = released + args.timeout_s
                    while backlog(client, keys, args.shards) and time.monotonic() < deadline:
                        if kill_at and time.monotonic() - released >= kill_at[0]:
                            kill_at.pop(0)
                            index = rng.randrange(len(workers))
                            victim = workers[index]
                            victim.kill()
                            victim.stop()
                            kills.append(f"{time.monotonic() - released:.0f} s: group {index}")
                            workers[index] = leadsync_worker(env, args.concurrency).start()
                        time.sleep(0.05)
                    drain_s = time.monotonic() - released
                status_of = outcome_statuses(producer, ids)
        finally:
            for worker in workers:
                worker.stop()
            client.close()
        summary = sim.admin.summary()
        log = sim.admin.calls()
        db = sim.admin.leads()

    sent: Counter[str] = Counter()
    applied: Counter[str] = Counter()
    for call in log:
        sent.update(call["keys"])
        if call["outcome"] in APPLIED:
            applied.update(call["keys"])
    # Every generated lead is valid and unique, so request i is lead i.
    statuses = Counter(status_of)
    in_marketo = {lead["email"].lower() for lead in db if lead["email"]}
    unfinished = sum(1 for s in status_of if s in ("PENDING", "UNKNOWN"))
    missing = sum(
        1
        for lead, status in zip(leads, status_of, strict=True)
        if status in ("CREATED", "UPDATED") and lead["email"].lower() not in in_marketo
    )
    faults = summary.get("faults_by_code", {})
    limit_faults = int(faults.get("20023", 0)) + int(faults.get("20024", 0))
    rows: list[list[object]] = [
        ["leads enqueued", len(ids), ""],
        ["outcomes by status", ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items())), ""],
        [
            "lost: no final outcome, or CREATED/UPDATED but absent in Marketo (must be 0)",
            unfinished + missing,
            f"{unfinished} without a final outcome, {missing} absent",
        ],
        [
            "leads sent in more than one call (any outcome)",
            sum(1 for n in sent.values() if n > 1),
            "",
        ],
        [
            "leads applied by Marketo more than once (ok / truncated / hang calls)",
            sum(1 for n in applied.values() if n > 1),
            "",
        ],
        [
            "calls beyond limits: 20023 + 20024 faults (must be 0)",
            limit_faults,
            f"max in flight {summary.get('max_concurrency')} (limit 10), "
            f"max in 20 s {summary.get('max_calls_in_window')} (limit 100)",
        ],
        [
            "calls by outcome",
            ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())),
            "",
        ],
        ["faults by code", ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "-", ""],
        ["workers killed (SIGKILL to the group, restarted)", "; ".join(kills) or "none", ""],
        ["enqueue (upsert_many)", f"{enqueue_s:.1f} s", ""],
        ["time to drain (backlog released to last outcome)", f"{drain_s:.0f} s", ""],
    ]
    body = (
        f"{len(ids):,} leads, simulator latency {args.latency:g} s (+ up to {args.latency / 2:g} s "
        f"jitter), Marketo limits 100 calls / 20 s and 10 in flight, injected faults per call: "
        + ", ".join(
            f"{k.removeprefix('fault_').removesuffix('_rate')} {v:.0%}" for k, v in FAULTS.items()
        )
        + f" (hang {args.hang_s:g} s). leadsync: {args.workers} worker groups x {args.concurrency} "
        f"processes, LEADSYNC_RATE_LIMIT_CALLS={args.rate_calls}, LEADSYNC_MAX_CONCURRENT_CALLS="
        f"{args.max_concurrent}, LEADSYNC_REQUEST_TIMEOUT_S={args.request_timeout_s:g}, "
        f"LEADSYNC_LEASE_TTL_S={args.lease_ttl_s:g}, {args.shards} shards; the bench sends the "
        "beat tick.\n\n" + md_table(["measure", "value", "note"], rows)
    )
    print(body)
    if not args.no_write:
        write_section(f"soak-{args.leads}", f"soak ({args.leads:,} leads)", machine, body)
