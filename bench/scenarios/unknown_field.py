"""``unknown-field``: what a batch costs in calls when some of its records carry an attribute
the Marketo instance does not know (the simulator faults the whole call with 20105 and
names the unknown fields, as Marketo does).

Each case enqueues 300 leads into idle workers (one shard, LEADSYNC_BATCH_SIZE=300, a short
flush interval: one batch of 300 forms before the first tick), then the bench sends the
tick until every outcome is stored. Calls are counted from the simulator's call log.
Marketo's and leadsync's limits stay at their defaults (50 calls / 20 s for leadsync).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    ROOT,
    SimProcess,
    code_version,
    command_line,
    machine_line,
    md_table,
    write_section,
)
from bench.systems import LEADSYNC_PREFIX, Ticker, backlog, leadsync_env, leadsync_worker
from marketo_sim.config import STANDARD_LEAD_FIELDS
from marketo_sim.embedded import embedded_redis
from producers.contract import Keys
from producers.producer import LeadProducer

LEADS = 300
#: Attribute names the simulator does not know (not in STANDARD_LEAD_FIELDS).
UNKNOWN = (
    "FavoriteColor",
    "ShoeSize",
    "PetName",
    "Horoscope",
    "LuckyNumber",
    "TeaOrCoffee",
    "Nickname",
    "Pronoun",
    "Hobby",
    "HomeTown",
)
assert not set(UNKNOWN) & STANDARD_LEAD_FIELDS


def base_lead(index: int) -> dict[str, Any]:
    return {
        "email": f"uf{index}@unknown-field.example.com",
        "attributes": {"FirstName": f"Ann{index}", "Company": "Acme", "LeadSource": "bench"},
    }


def with_field(lead: dict[str, Any], name: str) -> dict[str, Any]:
    return {**lead, "attributes": {**lead["attributes"], name: "x"}}


def case_leads(case: str) -> tuple[list[dict[str, Any]], int]:
    """The 300 leads of a case, and how many carry an unknown field."""
    leads = [base_lead(i) for i in range(LEADS)]
    if case in ("all", "all-refused"):
        return [with_field(lead, UNKNOWN[0]) for lead in leads], LEADS
    if case == "all-varied":
        return [with_field(lead, UNKNOWN[i % len(UNKNOWN)]) for i, lead in enumerate(leads)], LEADS
    if case == "three":
        bad = {50: UNKNOWN[0], 150: UNKNOWN[1], 250: UNKNOWN[2]}
        return [with_field(lead, bad[i]) if i in bad else lead for i, lead in enumerate(leads)], 3
    raise ValueError(f"unknown case {case}")


CASES = {
    "all": f"all 300 carry one unknown attribute ({UNKNOWN[0]})",
    "three": f"3 of 300 carry an unknown attribute ({', '.join(UNKNOWN[:3])}, one each)",
    "all-varied": f"all 300 carry one unknown attribute, {len(UNKNOWN)} different names",
    "all-refused": "as `all`, the producer given the known fields (LEADSYNC_KNOWN_FIELDS)",
}


def run_case(case: str, args: argparse.Namespace, machine: list[str]) -> dict[str, Any]:
    leads, bad = case_leads(case)
    sim_config = {"latency_s": args.latency, "seed": 1}
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        if not machine:
            machine.append(machine_line(redis_url))
        env = leadsync_env(
            redis_url,
            sim,
            shards=args.shards,
            batch_size=LEADS,
            flush_interval_s=args.flush_interval_s,
        )
        client = redis.Redis.from_url(redis_url)
        keys = Keys(LEADSYNC_PREFIX)
        worker = leadsync_worker(env, args.concurrency)
        refused_at_enqueue = 0
        try:
            worker.start()
            worker.wait_ready()
            if case == "all-refused":
                try:
                    producer = LeadProducer(
                        redis.Redis.from_url(redis_url),
                        key_prefix=LEADSYNC_PREFIX,
                        shards=args.shards,
                        owns_client=True,
                        known_fields=sorted(STANDARD_LEAD_FIELDS),
                    )
                except TypeError:
                    return {"case": case, "supported": False}
            else:
                producer = LeadProducer.from_url(
                    redis_url, key_prefix=LEADSYNC_PREFIX, shards=args.shards
                )
            with producer:
                results = producer.upsert_many(leads)
                ids = [r for r in results if isinstance(r, str)]
                refused_at_enqueue = len(results) - len(ids)
                refusal = next((str(r) for r in results if not isinstance(r, str)), None)
                with Ticker(env):
                    released = time.monotonic()
                    deadline = released + args.timeout_s
                    while backlog(client, keys, args.shards) and time.monotonic() < deadline:
                        worker.check_alive()
                        time.sleep(0.1)
                    drain_s = time.monotonic() - released
                left = backlog(client, keys, args.shards)
                outcomes = producer.outcomes(ids) if ids else []
        finally:
            worker.stop()
            client.close()
        log = sim.admin.calls()
    statuses = Counter(o.status.value if o is not None else "UNKNOWN" for o in outcomes)
    codes = Counter(
        f"{o.status.value} {o.error_code}"
        for o in outcomes
        if o is not None and o.status.value not in ("CREATED", "UPDATED")
    )
    enqueued = [lead for lead, r in zip(leads, results, strict=True) if isinstance(r, str)]
    misjudged = 0  # a good lead not delivered, or a bad one delivered
    for lead, o in zip(enqueued, outcomes, strict=True):
        delivered = o is not None and o.status.value in ("CREATED", "UPDATED")
        if delivered == any(name in UNKNOWN for name in lead["attributes"]):
            misjudged += 1
    sample_error = next(
        (o.error for o in outcomes if o is not None and o.status.value == "FAILED"), None
    )
    return {
        "case": case,
        "supported": True,
        "leads": LEADS,
        "bad": bad,
        "refused_at_enqueue": refused_at_enqueue,
        "refusal": refusal,
        "calls": len(log),
        "call_sizes": [int(c["leads"]) for c in log],
        "call_outcomes": [c["fault_code"] or c["outcome"] for c in log],
        "calls_20105": sum(1 for c in log if c["fault_code"] == 20105),
        "statuses": dict(statuses),
        "not_ok": dict(codes),
        "misjudged": misjudged,
        "drain_s": drain_s,
        "backlog_left": left,
        "sample_error": (sample_error or "")[:200],
    }


def case_row(code: str, r: Mapping[str, Any]) -> list[object]:
    if not r.get("supported", True):
        return [CASES[r["case"]], code, "n/a (no such setting)", "", "", "", ""]
    sizes = r["call_sizes"]
    shown = " ".join(str(n) for n in sizes[:12]) + (" ..." if len(sizes) > 12 else "")
    return [
        CASES[r["case"]],
        code,
        r["calls"],
        f"{r['calls_20105']}",
        shown or "-",
        ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        + (f"; refused at enqueue {r['refused_at_enqueue']}" if r["refused_at_enqueue"] else "")
        + (f"; **{r['misjudged']} misjudged**" if r["misjudged"] else ""),
        f"{r['drain_s']:.1f} s",
    ]


HEADERS = [
    "case",
    "code",
    "calls",
    "of them 20105",
    "leads per call, in order",
    "outcomes",
    "drain",
]


def render(runs: Sequence[Mapping[str, Any]], code: str, baseline: Mapping[str, Any] | None) -> str:
    old = {r["case"]: r for r in baseline["runs"]} if baseline else {}
    rows: list[list[object]] = []
    for r in runs:
        if r["case"] in old:
            rows.append(case_row(baseline["code"] if baseline else "", old[r["case"]]))
        rows.append(case_row(code, r))
    return md_table(HEADERS, rows)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run unknown-field")
    parser.add_argument("--cases", default="all,three,all-varied,all-refused")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--flush-interval-s", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    code = code_version()
    machine: list[str] = []
    runs: list[dict[str, Any]] = []
    for case in args.cases.split(","):
        began = time.monotonic()
        print(f"--- {case} ({code})", flush=True)
        result = run_case(case, args, machine)
        result["wall_s"] = time.monotonic() - began
        runs.append(result)
        print(json.dumps(result), flush=True)
        if args.save:
            args.save.write_text(json.dumps(_saved(runs, code), indent=2))
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    body = (
        f"{LEADS} leads per case enqueued into idle workers, {args.shards} shard(s), "
        f"LEADSYNC_BATCH_SIZE={LEADS}, LEADSYNC_FLUSH_INTERVAL_S={args.flush_interval_s:g}, "
        f"leadsync's default limits; simulator {args.latency:g} s per call, Marketo's default "
        "limits, 20105 naming every unknown field of the call.\n\n" + render(runs, code, baseline)
    )
    print(body)
    if not args.no_write:
        write_section("unknown-field", "unknown-field", machine[0], body)


def _saved(runs: Sequence[Mapping[str, Any]], code: str) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "code": code,
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "runs": list(runs),
    }
