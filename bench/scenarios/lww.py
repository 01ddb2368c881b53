"""``lww``: Marketo ends with each lead's LAST written value, under faults, worker kills
and limiter refusals.

N upserts over P people (write ``n`` sets ``Company`` to ``"person<p> write <n>"``, so the
last value of every person is known). The writes go in through the real ``LeadProducer``
in waves while real Celery worker groups drain against the simulator process, so a
person's writes are a few batches apart on its shard. Each write cycles through a fresh
shuffle of the people, so some repeats land within one batch and some several apart.

Three modes, each on its own private ``redis-server`` and simulator:

* ``faults``: a share of the simulator's calls fault, split evenly over hang (longer than
  leadsync's request timeout), HTTP 502, truncated XML, 10001, 20023 and 20024;
* ``kills``: no faults; a random worker group is SIGKILLed every few seconds and restarted;
* ``refusals``: no faults and high simulator limits, but leadsync's own rate limit far
  below the demand, so most drains are refused a permit.

After the backlog drains, the simulator's lead database is compared with the last write of
each person. STALE counts people whose last write ended CREATED/UPDATED but whose Marketo
value is another write. "Applied out of order" reads the simulator's per-lead write
history: an older write applied after a newer one (a later write may have repaired it).

``--json PATH`` saves the figures; ``--compare PATH`` puts such a file (a run of another
tree with the same parameters) beside this run's column in the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import waves
from bench.harness import (
    SimProcess,
    Worker,
    code_version,
    command_line,
    machine_line,
    md_table,
    write_section,
)
from bench.systems import leadsync_env, leadsync_worker
from marketo_sim.embedded import embedded_redis

MODES = ("faults", "kills", "refusals")

#: The fault kinds of the ``faults`` mode (each gets an equal share of --fault-rate).
FAULT_KINDS = (
    "fault_hang_rate",
    "fault_http_502_rate",
    "fault_truncated_rate",
    "fault_internal_10001_rate",
    "fault_rate_20023_rate",
    "fault_concurrency_20024_rate",
)

#: Per-mode defaults of --people and --latency (a value given on the command line wins).
#: kills: closer repeats (1.5 batches of people per shard) and slower calls, so a SIGKILL
#: lands in a cycle that read more than a batch; with 400 people and 0.05 s the old code
#: showed no stale lead in this mode.
DEFAULTS = {"people": 400, "latency": 0.05}
MODE_DEFAULTS: dict[str, dict[str, Any]] = {"kills": {"people": 240, "latency": 0.6}}


def mode_args(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    """``args`` with --people and --latency resolved for ``mode``."""
    resolved = argparse.Namespace(**vars(args))
    for name, value in {**DEFAULTS, **MODE_DEFAULTS.get(mode, {})}.items():
        if getattr(resolved, name) is None:
            setattr(resolved, name, value)
    return resolved


def mode_settings(mode: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(simulator fields, leadsync settings) of one mode."""
    sim: dict[str, Any] = {**waves.quiet_sim(args.latency, args.seed), "hang_s": args.hang_s}
    if mode == "faults":
        sim.update({kind: args.fault_rate / len(FAULT_KINDS) for kind in FAULT_KINDS})
    refusals = mode == "refusals"
    settings: dict[str, Any] = {
        "batch_size": args.batch_size,
        "rate_limit_calls": args.refusal_calls if refusals else 100_000,
        "rate_limit_window_s": args.refusal_window_s if refusals else 20,
        "max_concurrent_calls": args.max_concurrent,
        "daily_quota": 10_000_000,
        "lease_ttl_s": args.lease_ttl_s,
        "request_timeout_s": args.request_timeout_s,
        "flush_interval_s": 0.2,
        **waves.FAST_RECOVERY,  # INFO: the drain's one line per cycle that sent or was refused
    }
    return sim, settings


def run_mode(mode: str, args: argparse.Namespace, seen_machine: list[str]) -> dict[str, Any]:
    args = mode_args(args, mode)
    rng = random.Random(args.seed)
    records = waves.make_writes(args.people, args.writes, args.seed, "lww", {"FirstName": "P{p}"})
    sim_config, settings = mode_settings(mode, args)
    kills: list[str] = []
    workers: list[Worker] = []
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        if not seen_machine:
            seen_machine.append(machine_line(redis_url))
        env = leadsync_env(redis_url, sim, shards=args.shards, **settings)
        started_workers: list[Worker] = []

        def spawn() -> Worker:
            worker = leadsync_worker(env, args.concurrency).start()
            started_workers.append(worker)
            return worker

        workers = [spawn() for _ in range(args.workers)]
        for worker in workers:
            worker.wait_ready()
        next_kill = [args.kill_every_s]

        def tick(elapsed: float) -> None:
            """Kill a group when one is due (``kills`` mode)."""
            if mode == "kills" and elapsed >= next_kill[0] and elapsed < args.kill_for_s:
                next_kill[0] = elapsed + args.kill_every_s
                index = rng.randrange(len(workers))
                workers[index].kill()
                workers[index].stop()
                kills.append(f"{elapsed:.0f}")
                workers[index] = spawn()

        try:
            written = waves.write_and_drain(redis_url, env, records, args, tick=tick)
        finally:
            for worker in workers:
                worker.stop()
        summary = sim.admin.summary()
        db = sim.admin.leads()
        calls = sim.admin.calls()

    # --- what Marketo ended with, against the last write of each person -------------------
    ids, status_of = written.ids, written.statuses
    compared = waves.compare(records, ids, status_of, db)
    out_of_order = sum(
        1 for found in compared.by_email.values() if waves.older_after_newer(found[-1]["history"])
    )
    sized = [len(c["keys"]) for c in calls if c.get("keys")]
    per_call = summary.get("leads_per_call") or {}
    return {
        "mode": mode,
        "people": len(compared.last),
        "upserts": written.upserts,
        "stale": len(compared.stale),
        "stale_examples": compared.stale_examples,
        "stale_older": compared.stale_older,
        "missing": compared.missing,
        "last_not_success": compared.not_success,
        "without_final": sum(1 for s in status_of if s in ("PENDING", "UNKNOWN")),
        "statuses": dict(sorted(Counter(status_of).items())),
        "out_of_order": out_of_order,
        "duplicate_leads": compared.duplicate_leads,
        "calls": int(summary.get("calls", 0)),
        "call_outcomes": dict(sorted(summary.get("outcomes", {}).items())),
        "faults_by_code": dict(sorted(summary.get("faults_by_code", {}).items())),
        "leads_per_call_ok": float(per_call.get("mean", 0.0)),
        "leads_per_call_all": sum(sized) / len(sized) if sized else 0.0,
        "upserts_per_call": (written.upserts / len(calls)) if calls else 0.0,
        "drains_logged": waves.drains_logged(started_workers),
        "kills": kills,
        "write_s": written.write_s,
        "drain_s": written.drain_s,
        "backlog_left": written.backlog_left,
    }


def rows_of(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(measure, one value per result) for one mode."""

    def statuses(r: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in r["statuses"].items())

    def outcomes(r: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in r["call_outcomes"].items())

    def drains(r: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in r["drains_logged"].items()) or "-"

    measures: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        ("people / upserts", lambda r: f"{r['people']:,} / {r['upserts']:,}"),
        (
            "**STALE**: last write CREATED/UPDATED, Marketo holds another (must be 0)",
            lambda r: (
                f"**{r['stale']:,}**" + (f" ({r['stale_older']:,} older)" if r["stale"] else "")
            ),
        ),
        (
            "missing: last write CREATED/UPDATED, absent in Marketo (must be 0)",
            lambda r: r["missing"],
        ),
        ("request ids without a final outcome (must be 0)", lambda r: r["without_final"]),
        ("people whose last write did not end CREATED/UPDATED", lambda r: r["last_not_success"]),
        ("outcomes by status", statuses),
        ("people with an older write applied after a newer one", lambda r: r["out_of_order"]),
        ("calls made", lambda r: f"{r['calls']:,}"),
        ("calls by outcome (simulator)", outcomes),
        (
            "leads per call: answered calls / all calls; upserts per call",
            lambda r: (
                f"{r['leads_per_call_ok']:.1f} / {r['leads_per_call_all']:.1f}; "
                f"{r['upserts_per_call']:.1f}"
            ),
        ),
        ("drains by end status (worker INFO lines)", drains),
        ("workers SIGKILLed (s after the first wave)", lambda r: ", ".join(r["kills"]) or "-"),
        ("writing / until drained", lambda r: f"{r['write_s']:.0f} s / {r['drain_s']:.0f} s"),
    ]
    return [(name, [str(get(r)) for r in results]) for name, get in measures]


def describe(args: argparse.Namespace, modes: Sequence[str]) -> str:
    def people(mode: str) -> str:
        n = mode_args(args, mode).people
        return f"{mode} {n:,} (about {n / args.shards:.0f} per shard)"

    def latency(mode: str) -> str:
        return f"{mode} {mode_args(args, mode).latency:g} s"

    return (
        f"{args.writes:,} upserts in {args.waves} waves ({args.pause_s:g} s apart) while the "
        f"workers drain, over P people: {', '.join(people(m) for m in modes)}. {args.shards} "
        f"shards, LEADSYNC_BATCH_SIZE={args.batch_size}; {args.workers} worker groups x "
        f"{args.concurrency} processes, LEADSYNC_MAX_CONCURRENT_CALLS={args.max_concurrent}, "
        f"LEADSYNC_REQUEST_TIMEOUT_S={args.request_timeout_s:g}, "
        f"LEADSYNC_LEASE_TTL_S={args.lease_ttl_s:g}; simulator latency per call "
        f"({', '.join(latency(m) for m in modes)}, + up to half as much jitter), its limits "
        f"high (100,000 calls / 20 s, 100 in flight); seed {args.seed}. faults: "
        f"{args.fault_rate:.0%} of calls fault, {args.fault_rate / len(FAULT_KINDS):.1%} each "
        f"of hang ({args.hang_s:g} s), 502, truncated, 10001, 20023, 20024. kills: a random "
        f"group SIGKILLed every {args.kill_every_s:g} s (for the first {args.kill_for_s:g} s) "
        f"and restarted. refusals: LEADSYNC_RATE_LIMIT_CALLS={args.refusal_calls} per "
        f"LEADSYNC_RATE_LIMIT_WINDOW_S={args.refusal_window_s:g}; other modes 100,000 / 20 s."
    )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run lww")
    parser.add_argument("--mode", choices=(*MODES, "all"), default="all")
    parser.add_argument("--people", type=int, help="default 400; kills 240")
    parser.add_argument("--writes", type=int, default=4000)
    waves.add_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--latency", type=float, help="default 0.05 s; kills 0.6 s")
    parser.add_argument("--request-timeout-s", type=float, default=3.0)
    parser.add_argument("--lease-ttl-s", type=float, default=8.0)
    parser.add_argument("--hang-s", type=float, default=5.0)
    parser.add_argument("--fault-rate", type=float, default=0.30)
    parser.add_argument("--kill-every-s", type=float, default=5.0)
    parser.add_argument("--kill-for-s", type=float, default=60.0)
    parser.add_argument("--refusal-calls", type=int, default=10)
    parser.add_argument("--refusal-window-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="drain, per mode")
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--compare", type=Path, help="a --json file of another tree's run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    machine: list[str] = []
    modes = MODES if args.mode == "all" else (args.mode,)
    results = {}
    for mode in modes:
        started = time.monotonic()
        results[mode] = run_mode(mode, args, machine)
        results[mode]["run_s"] = time.monotonic() - started
        print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    run = {
        "code": code_version(),
        "command": command_line(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {k: v for k, v in vars(args).items() if k not in ("json", "compare", "no_write")},
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(run, indent=1))
    other = json.loads(args.compare.read_text()) if args.compare else None
    headers = ["mode", "measure"]
    if other:
        headers += [f"other: {other['code']}", f"this: {run['code']}"]
    else:
        headers += [run["code"]]
    rows: list[list[object]] = []
    for mode in modes:
        columns = [results[mode]]
        if other:
            if mode not in other["results"]:
                continue
            columns.insert(0, other["results"][mode])
        for name, values in rows_of(columns):
            rows.append([mode, name, *values])
    body = describe(args, modes) + "\n\n"
    if other:
        same = other["params"] == run["params"]
        body += (
            f"- other run: {other['date']}, code {other['code']}, `{other['command']}`"
            + ("" if same else f" (its parameters differ: {other['params']})")
            + "\n\n"
        )
    body += md_table(headers, rows)
    print(body)
    if not args.no_write:
        write_section("lww", "lww", machine[0], body)
