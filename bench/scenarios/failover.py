"""``failover``: the whole pipeline through a Redis master failure, and what WAIT costs.

(a) Per fault (``kill``: SIGKILL the master, its pod restarts it 1 s later as a replica of
the master the sentinels name; ``freeze``: SIGSTOP past the sentinels' timeout, then
SIGCONT, a stale master) and per LEADSYNC_ENQUEUE_REPLICAS (1, and 0: the default, where
an acknowledged upsert may be lost), ``tests.support.failover_run.run_failover`` for
longer than the test: master, two replicas and three sentinels, a real Celery worker with
beat, ``leadsync api`` and the simulator, and two writers (a producer and the HTTP API)
retrying each write until acknowledged, faster than Marketo's scaled-down window carries.
Reported: upserts acknowledged vs terminal and in Marketo (missing, stale), acknowledged
upserts lost, keys in two calls at once, calls per rate window before and after the fault
vs the limit, limit faults, seconds to resume intake (per writer) and delivery, refusals
the writers saw, worker restarts.

(b) Enqueue cost with WAIT against without it on the same master + one replica:
sequential ``LeadProducer.upsert`` with replicas=0 and replicas=1 (in blocks and
interleaved call by call), and ``upsert_many`` of 1000 records per round trip.

    python -m bench.run failover [--faults kill,freeze] [--replicas 1,0] [--before-s 10]
        [--after-s 30] [--settle-s 60] [--upserts 3000] [--rounds 100] [--no-write]
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
    BATCH_SIZE,
    CARRIED_PER_S,
    PAUSE_S,
    PEOPLE,
    RATE_CALLS,
    RATE_WINDOW_S,
    SATURATED_CALLS,
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
            return f"{quantile(ms, 0.5):.1f} / {quantile(ms, 0.99):.1f} / {max(ms, default=0):,.1f}"

        return cell

    return [
        row("upserts acknowledged", acked),
        row(
            "keys acknowledged both before the fault and after it",
            lambda r: f"{r.keys_across_fault} of {2 * PEOPLE}",
        ),
        row(
            "**acknowledged, then lost with the old master** (target 0 with replicas=1; "
            "replicas=0 allows it, and the rows below cover the rest)",
            lambda r: f"**{r.lost:,}**",
        ),
        row(
            "keys whose newest acknowledged value was lost (Marketo keeps an older one)",
            lambda r: f"{r.lost_newest:,}",
        ),
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
        row(
            f"most calls in one window before the fault / from it on (full: "
            f"{SATURATED_CALLS}-{RATE_CALLS})",
            lambda r: f"{r.window_before} / {r.window_after}",
        ),
        row("limit faults (606/607/615/20023/20024; target none)", limits),
        row(
            "calls (simulator), leads per call / faults by code",
            lambda r: (
                f"{r.summary['calls']:,}, {r.summary['leads_per_call']['mean']:.1f} / "
                f"{counts(r.summary['faults_by_code'])}"
            ),
        ),
        row("**intake resumed**: producer", lambda r: seconds(r.intake_resumed_s["producer"])),
        row("**intake resumed**: HTTP API", lambda r: seconds(r.intake_resumed_s["api"])),
        row(
            "**delivery resumed** (first Marketo call after the fault)",
            lambda r: seconds(r.delivery_resumed_s),
        ),
        row("refusals seen by the producer (retried)", lambda r: counts(r.refusals["producer"])),
        row("refusals seen by the API client (retried)", lambda r: counts(r.refusals["api"])),
        row("producer ack ms p50 / p99 / max", ack_ms("producer")),
        row("API ack ms p50 / p99 / max", ack_ms("api")),
        row(
            "**worker restarts** (an exited worker started again; target 0)",
            lambda r: f"**{r.worker_restarts}**",
        ),
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
    parser.add_argument(
        "--replicas", default="1,0", help="LEADSYNC_ENQUEUE_REPLICAS values, each with every fault"
    )
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
    replicas = [int(n) for n in args.replicas.split(",") if n]

    started = time.monotonic()
    reports: list[FailoverReport] = []
    for wanted in replicas:
        for fault in faults:
            t0 = time.monotonic()
            report = run_failover(
                fault,
                before_s=args.before_s,
                after_s=args.after_s,
                settle_s=args.settle_s,
                replicas=wanted,
            )
            print(f"{report.case}: {time.monotonic() - t0:.0f} s, {report.brief()}", flush=True)
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
        "(a) Per case, `tests.support.failover_run.run_failover(fault, "
        f"before_s={args.before_s:g}, after_s={args.after_s:g}, settle_s={args.settle_s:g}, "
        "replicas=...)`: master, two replicas and three sentinels (down-after 1 s, "
        "failover-timeout 3 s), a Celery worker (2 processes) with beat, `leadsync api` and "
        f"the simulator; {SHARDS} shards, Marketo's window scaled to {RATE_CALLS} calls / "
        f"{RATE_WINDOW_S:g} s (simulator and leadsync), batches of {BATCH_SIZE} leads, "
        "LEADSYNC_FLUSH_INTERVAL_S=1, LEADSYNC_REPLICA_WAIT_S=0.5. Once the worker has "
        f"delivered a probe, two writers over {PEOPLE} people each, a producer and the HTTP "
        "API (LEADSYNC_ENQUEUE_REPLICAS as the case says, for them and the worker), each "
        f"retrying a write until acknowledged and pausing {PAUSE_S:g} s after each: more "
        f"upserts a second than the {CARRIED_PER_S:.1f} leads the limiter lets through, so "
        "the calls fill the window before the fault and the backlog fills it after. `kill`: SIGKILL the master, restarted 1 s after "
        "the fault as a replica of the master the sentinels name (as the HA overlay's "
        "start-redis.sh does); `freeze`: SIGSTOP until the sentinels name a new master, "
        "1 s more, SIGCONT (a stale master, demoted). Seconds are from the fault; intake "
        "resumed = the first write acknowledged more than 0.2 s after it. Lost = "
        "acknowledged, and unknown to leadsync for a second once nothing is pending; with "
        "replicas=0 the other rows cover the writes that were not lost (a key holding a "
        "lost write newer than its last kept one is not stale).\n\n"
        + md_table(["measure", *(r.case for r in reports)], failover_rows(reports))
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
