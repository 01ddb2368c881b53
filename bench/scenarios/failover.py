"""``failover``: the whole pipeline through a Redis master failure, and what WAIT costs.

(a) Per fault (``kill``: SIGKILL the master, its pod restarts it 1 s later; ``freeze``:
SIGSTOP past the sentinels' timeout, then SIGCONT, a stale master),
``tests.support.failover_run.run_failover`` for longer than the test: master, two replicas
and three sentinels, a real Celery worker with beat, ``leadsync api`` and the simulator,
and two writers (a producer with LEADSYNC_ENQUEUE_REPLICAS=1 and the HTTP API) retrying
each write until acknowledged. Reported: upserts acknowledged vs terminal and in Marketo
(missing, stale), keys in two calls at once, calls per rate window vs the limit and limit
faults, seconds to resume intake (per writer) and delivery, refusals the writers saw.

(b) Enqueue cost with WAIT against without it on the same master + one replica:
sequential ``LeadProducer.upsert`` with replicas=0 and replicas=1 (in blocks and
interleaved call by call), and ``upsert_many`` of 1000 records per round trip.

    python -m bench.run failover [--faults kill,freeze] [--before-s 10] [--after-s 30]
        [--settle-s 60] [--upserts 3000] [--rounds 100] [--no-write]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.harness import machine_line, md_table, write_section
from bench.systems import make_leads
from producers import LeadProducer
from producers.connect import redis_client
from tests.support.failover_run import (
    RATE_CALLS,
    RATE_WINDOW_S,
    SHARDS,
    FailoverReport,
    run_failover,
)
from tests.support.sentinel_set import sentinel_set

LIMIT_CODES = ("606", "607", "615", "20023", "20024")
BATCH = 1000


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def counts(mapping: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(mapping.items())) or "none"


# --- (a) the failover runs -----------------------------------------------------------


def failover_rows(reports: Sequence[FailoverReport]) -> list[list[object]]:
    def row(label: str, value: Callable[[FailoverReport], object]) -> list[object]:
        return [label, *(value(r) for r in reports)]

    def acked(r: FailoverReport) -> str:
        return (
            f"{r.acknowledged:,} (producer {len(r.enqueue_ms['producer']):,}, "
            f"API {len(r.enqueue_ms['api']):,})"
        )

    def limits(r: FailoverReport) -> str:
        return counts({c: n for c, n in r.summary["faults_by_code"].items() if c in LIMIT_CODES})

    def ack_ms(name: str) -> Callable[[FailoverReport], str]:
        def cell(r: FailoverReport) -> str:
            ms = r.enqueue_ms[name]
            return f"{quantile(ms, 0.5):.1f} / {quantile(ms, 0.99):.1f} / {max(ms, default=0):,.0f}"

        return cell

    return [
        row("upserts acknowledged", acked),
        row(
            "**acknowledged without a terminal outcome** (target 0)",
            lambda r: f"**{len(r.verdict.without_final_outcome)}**",
        ),
        row("outcomes by status", lambda r: counts(dict(r.verdict.statuses))),
        row(
            "unexpected final statuses (target none)",
            lambda r: counts(dict(r.verdict.unexpected_statuses)),
        ),
        row(
            "**keys missing in Marketo** (target 0)",
            lambda r: f"**{len(r.verdict.missing_in_marketo)}**",
        ),
        row(
            "**keys stale in Marketo** (target 0; a value tried after the last ack is not stale)",
            lambda r: f"**{len(r.verdict.stale_in_marketo)}**",
        ),
        row(
            "keys with several leads in Marketo (target 0)",
            lambda r: len(r.verdict.duplicate_leads_in_marketo),
        ),
        row(
            "**keys in two calls at once** (target 0)",
            lambda r: f"**{r.verdict.keys_in_concurrent_calls}**",
        ),
        row(
            "redundant sends (a key applied more often than written)",
            lambda r: r.verdict.redundant_sends,
        ),
        row(
            f"**most calls in one {RATE_WINDOW_S:g} s window** (limit {RATE_CALLS})",
            lambda r: f"**{r.summary['max_calls_in_window']}**",
        ),
        row("limit faults (606/607/615/20023/20024; target none)", limits),
        row(
            "calls (simulator) / faults by code",
            lambda r: f"{r.summary['calls']:,} / {counts(r.summary['faults_by_code'])}",
        ),
        row(
            "**intake resumed**: producer (WAIT 1 replica)",
            lambda r: seconds(r.intake_resumed_s["producer"]),
        ),
        row("**intake resumed**: HTTP API", lambda r: seconds(r.intake_resumed_s["api"])),
        row(
            "**delivery resumed** (first Marketo call after the fault)",
            lambda r: seconds(r.delivery_resumed_s),
        ),
        row("refusals seen by the producer (retried)", lambda r: counts(r.refusals["producer"])),
        row("refusals seen by the API client (retried)", lambda r: counts(r.refusals["api"])),
        row("producer ack ms p50 / p99 / max", ack_ms("producer")),
        row("API ack ms p50 / p99 / max", ack_ms("api")),
        row("problems() (the test's verdict)", lambda r: "; ".join(r.problems()) or "none"),
    ]


# --- (b) WAIT against no WAIT ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    what: str
    ms: list[float]
    per: int = 1

    def row(self) -> list[object]:
        median, p99 = quantile(self.ms, 0.5), quantile(self.ms, 0.99)
        per_record = f"{median * 1000 / self.per:.1f}" if self.per > 1 else "-"
        return [self.what, f"{len(self.ms):,}", f"{median:.3f}", f"{p99:.3f}", per_record]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def wait_costs(upserts: int, rounds: int) -> tuple[str, list[Cost]]:
    """Master + one replica (a SentinelSet; nothing fails): the producers' enqueue cost."""
    with sentinel_set(replicas=1, sentinels=1, down_after_ms=60_000) as cluster:
        url = f"redis://127.0.0.1:{cluster.master_port}/0"
        machine = machine_line(url)

        def producer(replicas: int) -> LeadProducer:
            return LeadProducer(redis_client(url), shards=SHARDS, owns_client=True,
                                replicas=replicas, replica_wait_s=1.0)  # fmt: skip

        plain, waiting = producer(0), producer(1)
        leads = make_leads(max(upserts * 2, BATCH * 4), seed=11)
        costs: list[Cost] = []
        with plain, waiting:
            for warm in range(200):  # connections, scripts loaded, the replica link warm
                lead = leads[warm]
                for p in (plain, waiting):
                    p.upsert(email=lead["email"], attributes=lead["attributes"])

            def one(p: LeadProducer, n: int) -> float:
                lead = leads[n % len(leads)]
                return timed(lambda: p.upsert(email=lead["email"], attributes=lead["attributes"]))

            def many(p: LeadProducer, n: int) -> float:
                chunk = leads[(n % 4) * BATCH : (n % 4 + 1) * BATCH]
                return timed(lambda: p.upsert_many(chunk))

            costs.append(
                Cost("upsert, replicas=0, a block", [one(plain, n) for n in range(upserts)])
            )
            costs.append(
                Cost(
                    "upsert, replicas=1 (WAIT), a block", [one(waiting, n) for n in range(upserts)]
                )
            )
            mixed: dict[int, list[float]] = {0: [], 1: []}
            for n in range(upserts):  # call by call: both see the same machine state
                for replicas, p in (
                    ((0, plain), (1, waiting)) if n % 2 else ((1, waiting), (0, plain))
                ):
                    mixed[replicas].append(one(p, n))
            costs.append(Cost("upsert, replicas=0, interleaved", mixed[0]))
            costs.append(Cost("upsert, replicas=1 (WAIT), interleaved", mixed[1]))
            batches: dict[int, list[float]] = {0: [], 1: []}
            for n in range(rounds):
                for replicas, p in (
                    ((0, plain), (1, waiting)) if n % 2 else ((1, waiting), (0, plain))
                ):
                    batches[replicas].append(many(p, n))
            costs.append(Cost(f"upsert_many ({BATCH}), replicas=0, interleaved", batches[0], BATCH))
            costs.append(
                Cost(f"upsert_many ({BATCH}), replicas=1 (WAIT), interleaved", batches[1], BATCH)
            )
    return machine, costs


# --- the section -----------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run failover")
    parser.add_argument("--faults", default="kill,freeze")
    parser.add_argument("--before-s", type=float, default=10.0)
    parser.add_argument("--after-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=60.0)
    parser.add_argument("--upserts", type=int, default=3000, help="sequential upserts per row")
    parser.add_argument("--rounds", type=int, default=100, help="upsert_many rounds per row")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    for fault in faults:
        if fault not in ("kill", "freeze"):
            parser.error(f"unknown fault {fault!r}")

    started = time.monotonic()
    reports: list[FailoverReport] = []
    for fault in faults:
        t0 = time.monotonic()
        report = run_failover(
            fault, before_s=args.before_s, after_s=args.after_s, settle_s=args.settle_s
        )
        print(f"{fault}: {time.monotonic() - t0:.0f} s, problems {report.problems()}", flush=True)
        reports.append(report)
    machine, costs = wait_costs(args.upserts, args.rounds)
    elapsed = time.monotonic() - started

    waits = {c.what: quantile(c.ms, 0.5) for c in costs}
    added = [
        waits["upsert, replicas=1 (WAIT), interleaved"] - waits["upsert, replicas=0, interleaved"],
        (
            waits[f"upsert_many ({BATCH}), replicas=1 (WAIT), interleaved"]
            - waits[f"upsert_many ({BATCH}), replicas=0, interleaved"]
        ),
    ]
    body = (
        "(a) Per fault, `tests.support.failover_run.run_failover(fault, "
        f"before_s={args.before_s:g}, after_s={args.after_s:g}, settle_s={args.settle_s:g})`: "
        "master, two replicas and three sentinels (down-after 1 s, failover-timeout 3 s), "
        f"a Celery worker (2 processes) with beat, `leadsync api` and the simulator; {SHARDS} "
        f"shards, Marketo's window scaled to {RATE_CALLS} calls / {RATE_WINDOW_S:g} s "
        "(simulator and leadsync), LEADSYNC_REPLICA_WAIT_S=0.5. Two writers over 30 people "
        "each: a producer with LEADSYNC_ENQUEUE_REPLICAS=1 and the HTTP API (the same "
        "setting), each retrying a write until acknowledged. `kill`: SIGKILL the master, "
        "restarted 1 s after the fault (empty, made a replica by the sentinels); `freeze`: "
        "SIGSTOP until the sentinels name a new master, 1 s more, SIGCONT (a stale master, "
        "demoted). Seconds are from the fault; intake resumed = the first write acknowledged "
        "more than 0.2 s after it.\n\n"
        + md_table(["measure", *(r.fault for r in reports)], failover_rows(reports))
        + "\n\n(b) Enqueue cost with WAIT against without it: master + one replica on this "
        f"machine (nothing fails), {SHARDS} shards, `replica_wait_s=1.0`; {args.upserts:,} "
        "sequential `LeadProducer.upsert` per row (distinct people), first as two blocks, "
        "then interleaved call by call (the order flipped each call); `upsert_many` of "
        f"{BATCH:,} records (one round trip, one WAIT) {args.rounds} rounds each, "
        "interleaved.\n\n"
        + md_table(
            ["path", "calls", "median ms", "p99 ms", "per record µs (median)"],
            [c.row() for c in costs],
        )
        + f"\n\nMedian with WAIT minus median without (interleaved): {added[0]:+.3f} ms per "
        f"single upsert, {added[1]:+.3f} ms per {BATCH:,}-record round trip "
        f"({added[1] * 1000 / BATCH:+.2f} µs per record). Whole run {elapsed / 60:.1f} min."
    )
    print(body)
    if not args.no_write:
        write_section("failover", "failover", machine, body)
