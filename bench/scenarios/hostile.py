"""``hostile``: what bad input costs the good records beside it, and what a dead-letter
replay restores (issue 18, "How it is measured").

Part ``mix``: G good upserts (distinct people, known fields ``Company`` and ``City``)
interleaved at random with H hostile ones, an equal share of each kind of :data:`KINDS`,
written through the real ``LeadProducer`` in waves while real Celery workers drain against
the simulator process; then the same G good records alone (same order, same waves), on a
fresh Redis and simulator. The bench environment sets ``LEADSYNC_FIELDS_REFRESH_S=0``, so
producers know no field list and unknown attributes reach Marketo's 20105. A refusal at
enqueue is the producer's ``InvalidLead`` (the field it names is read again from
``validate_lead``: the producer's ``upsert_many`` answers the same error per record, and
``waves.write_and_drain`` keeps only the request ids). Calls come from the simulator's call
log, isolation calls from the workers' drain INFO lines (``isolation_calls=``).

The 20105 text: the simulator names every unknown field unquoted
(``unknown fields for import: A, B``) and has no setting to quote them, so the variant
with quoted names is not run.

Part ``replay``: N people; write 1 of each (``--replay-case city``: ``{Company: Old,
City: OldCity}``; ``company``: ``{Company: Old}``) while every call faults 10001 and
``LEADSYNC_MAX_ATTEMPTS=1``, so each write 1 is dead-lettered; the faults stop; write 2
``{Company: New}`` of each drains; then ``leadsync dlq replay`` (the CLI, as an operator
runs it) and the drain. Marketo should end with ``{Company: New, City: OldCity}`` (city)
or ``{Company: New}`` with every write 1 FAILED/SUPERSEDED without a call (company).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from bench import waves
from bench.harness import (
    ROOT,
    WORKDIR,
    SimProcess,
    machine_line,
    md_table,
    running,
    wait_until,
    write_section,
)
from bench.scenarios.unknown_field import UNKNOWN
from bench.systems import LEADSYNC_PREFIX, Ticker, backlog, leadsync_env, leadsync_worker
from marketo_sim.embedded import embedded_redis
from producers.contract import Keys
from producers.errors import InvalidLead
from producers.lead import validate_lead
from producers.outcome import Outcome
from producers.producer import LeadProducer

SUCCESS = waves.SUCCESS
TERMINAL = (*SUCCESS, "FAILED")
#: Distinct unknown attribute names the unknown_field records share.
UNKNOWN_NAMES = UNKNOWN[:5]
#: Where a kind should be caught: at enqueue (InvalidLead) or by Marketo (a FAILED record).
REFUSED_AT_ENQUEUE = (
    "control_char",
    "lone_surrogate",
    "name_comma",
    "name_space",
    "bad_email",
    "nan",
    "inf",
)
FAILED_BY_MARKETO = ("unknown_field", "unknown_id", "rejected_email")
KINDS = (*REFUSED_AT_ENQUEUE, *FAILED_BY_MARKETO)
KIND_TEXT = {
    "control_char": "Company with U+0000/0001/0008/000B/001B",
    "lone_surrogate": "Company with U+D800 or U+DFFF alone",
    "name_comma": "attribute `Field, <n>`",
    "name_space": "attribute `My Field<n>`",
    "bad_email": "email `x@b@c.com`, `x@@example`, `x@nodot`",
    "nan": "LeadScore NaN",
    "inf": "AnnualRevenue +/-infinity",
    "unknown_field": f"Company, City + one of {len(UNKNOWN_NAMES)} unknown attributes",
    "unknown_id": "marketo_id of no lead (SOAP Id)",
    "rejected_email": "email on invalid.example (the simulator's rejected domain)",
}
_CONTROL = ("\x00", "\x01", "\x08", "\x0b", "\x1b")
_BAD_EMAILS = ("{u}@b@c.com", "{u}@@example", "{u}@nodot")
ISOLATION_RE = re.compile(r"isolation_calls=(\d+)")
REPLAY_RE = re.compile(r"replayed (\d+)")
SUPERSEDED_RE = re.compile(r"(\d+) superseded")


# --- the records ---------------------------------------------------------------------------


def good_record(index: int) -> dict[str, Any]:
    return {
        "email": f"good{index}@hostile.example.com",
        "attributes": {"Company": f"Good Co {index}", "City": f"City {index}"},
    }


def hostile_record(index: int, kind: str) -> dict[str, Any]:
    """Hostile record ``index`` of ``kind`` (its own person: never a good one's email)."""
    user = f"bad{index}"
    email = f"{user}@hostile.example.com"
    known = {"Company": f"Bad Co {index}", "City": f"Bad City {index}"}
    if kind == "control_char":
        return {"email": email, "attributes": {"Company": f"Acme{_CONTROL[index % 5]}Corp"}}
    if kind == "lone_surrogate":
        return {"email": email, "attributes": {"Company": "x\ud800" if index % 2 else "\udfffy"}}
    if kind == "name_comma":
        return {"email": email, "attributes": {f"Field, {index % 7}": "x"}}
    if kind == "name_space":
        return {"email": email, "attributes": {f"My Field{index % 7}": "x"}}
    if kind == "bad_email":
        return {"email": _BAD_EMAILS[index % 3].format(u=user), "attributes": known}
    if kind == "nan":
        return {"email": email, "attributes": {"LeadScore": float("nan")}}
    if kind == "inf":
        return {"email": email, "attributes": {"AnnualRevenue": float("inf") * (-1) ** index}}
    if kind == "unknown_field":
        name = UNKNOWN_NAMES[index % len(UNKNOWN_NAMES)]
        return {"email": email, "attributes": {**known, name: "x"}}
    if kind == "unknown_id":
        return {"marketo_id": 1_000_000 + index, "attributes": known}
    if kind == "rejected_email":
        return {"email": f"{user}@invalid.example", "attributes": known}
    raise ValueError(f"unknown kind {kind}")


def make_mix(good: int, hostile: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(kind, record): ``good`` good ones and ``hostile`` hostile ones, an equal share of
    each kind, shuffled together."""
    mix = [("good", good_record(i)) for i in range(good)]
    mix += [
        (KINDS[i % len(KINDS)], hostile_record(i, KINDS[i % len(KINDS)])) for i in range(hostile)
    ]
    random.Random(seed).shuffle(mix)
    return mix


def refusal_field(record: Mapping[str, Any]) -> str:
    """The field the contract's InvalidLead names for ``record`` ("-" when it passes)."""
    try:
        validate_lead(**record)
    except InvalidLead as exc:
        return re.sub(r"\d+", "<n>", exc.field)
    return "-"


# --- one system under test ----------------------------------------------------------------


def settings_of(args: argparse.Namespace, **extra: object) -> dict[str, Any]:
    """leadsync's settings: leadsync's and the simulator's limits out of the way, a drain
    INFO line per cycle (``waves.FAST_RECOVERY``)."""
    return {
        "batch_size": args.batch_size,
        "flush_interval_s": args.flush_interval_s,
        "rate_limit_calls": 100_000,
        "max_concurrent_calls": args.max_concurrent,
        "daily_quota": 10_000_000,
        **waves.FAST_RECOVERY,
        **extra,
    }


def read_outcomes(redis_url: str, ids: Sequence[str | None], shards: int) -> list[Outcome | None]:
    """The whole outcome of each accepted id (None ids skipped), 2,000 at a time."""
    accepted = [r for r in ids if r is not None]
    found: list[Outcome | None] = []
    with LeadProducer.from_url(redis_url, key_prefix=LEADSYNC_PREFIX, shards=shards) as producer:
        for start in range(0, len(accepted), 2000):
            found.extend(producer.outcomes(accepted[start : start + 2000]))
    return found


def resends(calls: Sequence[Mapping[str, Any]]) -> int:
    """Calls that carried only records of an earlier faulted call (an isolation step: the
    rest of a batch after its 20105, or a half of a split batch)."""
    faulted: list[frozenset[str]] = []
    count = 0
    for call in calls:
        keys = frozenset(call.get("keys") or ())
        if keys and any(keys <= earlier for earlier in faulted):
            count += 1
        if call["fault_code"] is not None:
            faulted.append(keys)
    return count


def isolation_calls(workers: Sequence[Any]) -> int:
    total = 0
    for worker in workers:
        log = WORKDIR / f"{worker.name}.log"
        if log.exists():
            total += sum(int(n) for n in ISOLATION_RE.findall(log.read_text(errors="replace")))
    return total


def run_mix(
    label: str,
    mix: Sequence[tuple[str, Mapping[str, Any]]],
    args: argparse.Namespace,
    machine: list[str],
) -> dict[str, Any]:
    """Write ``mix`` in waves while the workers drain; tally by kind."""
    records = [record for _, record in mix]
    with (
        embedded_redis() as (redis_url, _),
        SimProcess(**waves.quiet_sim(args.latency, args.seed)) as sim,
    ):
        if not machine:
            machine.append(machine_line(redis_url))
        env = leadsync_env(redis_url, sim, shards=args.shards, **settings_of(args))
        group = [leadsync_worker(env, args.concurrency) for _ in range(args.workers)]
        with running(group) as workers:
            written = waves.write_and_drain(
                redis_url, env, records, args, pause_after_last=False, no_outcome="NONE"
            )
        outcomes = iter(read_outcomes(redis_url, written.ids, args.shards))
        calls = sync_calls(sim)
        db = {str(lead["email"]).lower(): lead for lead in sim.admin.leads() if lead.get("email")}

    kinds: dict[str, dict[str, Any]] = {}
    good_held = 0
    for (kind, record), rid in zip(mix, written.ids, strict=True):
        tally = kinds.setdefault(
            kind, {"offered": 0, "refused": Counter(), "statuses": Counter(), "failed": Counter()}
        )
        tally["offered"] += 1
        if rid is None:
            tally["refused"][refusal_field(record)] += 1
            continue
        outcome = next(outcomes)
        status = outcome.status.value if outcome is not None else "NONE"
        tally["statuses"][status] += 1
        if status == "FAILED" and outcome is not None:
            code = outcome.error_code or "no code"
            tally["failed"][f"{code}: {_reason(outcome.error)}"] += 1
        lead = db.get(str(record.get("email", "")).lower())
        if (
            kind == "good"
            and lead
            and all(lead["attributes"].get(k) == v for k, v in record["attributes"].items())
        ):
            good_held += 1
    return {
        "run": label,
        "kinds": kinds,
        "good_held": good_held,
        "calls": len(calls),
        "call_outcomes": dict(Counter(str(c["fault_code"] or c["outcome"]) for c in calls)),
        "calls_20105": sum(1 for c in calls if c["fault_code"] == 20105),
        "ok_sizes": [int(c["leads"]) for c in calls if c["outcome"] == "ok"],
        "isolation_calls": isolation_calls(workers),
        "resends": resends(calls),
        "drains_logged": waves.drains_logged(workers),
        "write_s": written.write_s,
        "drain_s": written.drain_s,
        "backlog_left": written.backlog_left,
    }


def _reason(error: str | None) -> str:
    """An error text with its lead-specific parts (numbers, the unknown names) folded."""
    text = re.sub(r"\d+", "<n>", (error or "").strip())
    for name in UNKNOWN_NAMES:
        text = text.replace(name, "<name>")
    text = re.sub(r"(<name>(, )?)+", "<names>", text)
    return text[:90]


# --- the replay case -----------------------------------------------------------------------


def replay_writes(people: int, case: str, write: int) -> list[dict[str, Any]]:
    def attributes(p: int) -> dict[str, str]:
        if write == 2:
            return {"Company": f"New {p}"}
        return {"Company": f"Old {p}", **({"City": f"OldCity {p}"} if case == "city" else {})}

    return [
        {"email": f"replay{p}@hostile.example.com", "attributes": attributes(p)}
        for p in range(people)
    ]


def sync_calls(sim: SimProcess) -> list[dict[str, Any]]:
    return [c for c in sim.admin.calls() if c.get("operation", "sync") == "sync"]


def run_replay(case: str, args: argparse.Namespace, machine: list[str]) -> dict[str, Any]:
    people = args.people
    sim_config = {**waves.quiet_sim(args.latency, args.seed), "fault_internal_10001_rate": 1.0}
    result: dict[str, Any] = {"case": case, "people": people}
    began = time.monotonic()
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        if not machine:
            machine.append(machine_line(redis_url))
        env = leadsync_env(redis_url, sim, shards=args.shards, **settings_of(args, max_attempts=1))
        group = [leadsync_worker(env, args.concurrency) for _ in range(args.workers)]
        with contextlib.closing(redis.Redis.from_url(redis_url)) as client, running(group):
            first = waves.write_and_drain(
                redis_url, env, replay_writes(people, case, 1), args, pause_after_last=False
            )
            ids = [r for r in first.ids if r is not None]
            result["write1_faulted"] = dict(Counter(first.statuses))
            result["fault_calls"] = len(sync_calls(sim))
            sim.configure(fault_internal_10001_rate=0.0)
            second = waves.write_and_drain(
                redis_url, env, replay_writes(people, case, 2), args, pause_after_last=False
            )
            result["write2"] = dict(Counter(second.statuses))
            before = len(sync_calls(sim))
            result["write2_calls"] = before - result["fault_calls"]
            result["cli"] = replay_cli(env)
            with Ticker(env):
                drained = wait_until(
                    lambda: backlog(client, Keys(LEADSYNC_PREFIX), args.shards) == 0,
                    args.timeout_s,
                    0.05,
                )
            new_calls = sync_calls(sim)[before:]
            found = read_outcomes(redis_url, ids, args.shards)
        db = {str(lead["email"]).lower(): lead["attributes"] for lead in sim.admin.leads()}
    after = [o.status.value if o is not None else "NONE" for o in found]
    codes = Counter(o.error_code for o in found if o is not None and o.error_code)
    ends = Counter(
        _replay_end(db.get(r["email"]), p) for p, r in enumerate(replay_writes(people, case, 1))
    )
    result.update(
        {
            "replay_calls": len(new_calls),
            "replay_records": sum(int(c["leads"]) for c in new_calls),
            "replay_call_outcomes": dict(
                Counter(str(c["fault_code"] or c["outcome"]) for c in new_calls)
            ),
            "write1_after": dict(Counter(after)),
            "write1_codes": dict(codes),
            "terminal": sum(1 for s in after if s in TERMINAL),
            "still_dead": sum(1 for s in after if s == "DEAD_LETTERED"),
            "ends": dict(ends),
            "drained": drained,
            "run_s": time.monotonic() - began,
        }
    )
    return result


def replay_cli(env: Mapping[str, str]) -> dict[str, Any]:
    """``leadsync dlq replay`` with the workers' environment; its counts."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "dlq", "replay"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    replayed = REPLAY_RE.search(done.stdout)
    superseded = SUPERSEDED_RE.search(done.stdout)
    return {
        "rc": done.returncode,
        "replayed": int(replayed.group(1)) if replayed else None,
        "superseded": int(superseded.group(1)) if superseded else 0,
        "stderr": done.stderr[-500:],
    }


def _replay_end(attributes: Mapping[str, str] | None, p: int) -> str:
    """What Marketo holds for person ``p``, named by its Company and City."""
    if attributes is None:
        return "absent"
    company = {f"New {p}": "New", f"Old {p}": "Old"}.get(attributes.get("Company", ""), "other")
    city = attributes.get("City")
    held = "missing" if city is None else ("OldCity" if city == f"OldCity {p}" else "other")
    return f"Company {company}, City {held}"


# --- the tables ----------------------------------------------------------------------------


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "-"


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def _sum(run: Mapping[str, Any], kinds: Sequence[str], part: str, keys: Sequence[str] = ()) -> int:
    total = 0
    for kind in kinds:
        counts = run["kinds"].get(kind, {}).get(part, {})
        total += sum(v for k, v in counts.items() if not keys or k in keys)
    return total


def mix_rows(alone: Mapping[str, Any], mix: Mapping[str, Any]) -> list[list[str]]:
    """(measure, good alone, mix) rows."""
    unknown = len(UNKNOWN_NAMES)
    measures: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        (
            "upserts offered (good + hostile)",
            lambda r: f"{sum(k['offered'] for k in r['kinds'].values()):,}",
        ),
        (
            "refused at enqueue (InvalidLead)",
            lambda r: f"{_sum(r, (*KINDS, 'good'), 'refused'):,}",
        ),
        (
            "**good CREATED/UPDATED** (target: all)",
            lambda r: (
                f"**{_sum(r, ('good',), 'statuses', SUCCESS):,}** of {r['kinds']['good']['offered']:,}"
            ),
        ),
        (
            "**good FAILED / DEAD_LETTERED / other** (target 0)",
            lambda r: "**{:,} / {:,} / {:,}**".format(
                _sum(r, ("good",), "statuses", ("FAILED",)),
                _sum(r, ("good",), "statuses", ("DEAD_LETTERED",)),
                _sum(r, ("good",), "statuses")
                - _sum(r, ("good",), "statuses", (*TERMINAL, "DEAD_LETTERED")),
            ),
        ),
        ("good people Marketo holds with their Company and City", lambda r: f"{r['good_held']:,}"),
        (
            "hostile accepted and CREATED/UPDATED (target 0)",
            lambda r: f"{_sum(r, KINDS, 'statuses', SUCCESS):,}",
        ),
        ("hostile accepted and FAILED", lambda r: f"{_sum(r, KINDS, 'statuses', ('FAILED',)):,}"),
        (
            "calls (simulator call log)",
            lambda r: f"{r['calls']:,} ({_ratio(r['calls'], alone['calls'])})",
        ),
        ("calls by outcome", lambda r: _counts(r["call_outcomes"])),
        ("calls that faulted 20105", lambda r: f"{r['calls_20105']:,}"),
        (
            f"20105 calls per distinct unknown field ({unknown})",
            lambda r: f"{r['calls_20105'] / unknown:.1f}" if r["calls_20105"] else "-",
        ),
        (
            f"extra calls vs good alone per distinct unknown field ({unknown})",
            lambda r: f"{(r['calls'] - alone['calls']) / unknown:.1f}" if r is not alone else "-",
        ),
        (
            "isolation calls (call log: calls carrying only records of an earlier faulted call)",
            lambda r: f"{r['resends']:,}",
        ),
        (
            "isolation_calls= of the drain INFO lines (one-shard drains only; a drain of "
            "several shards logs none)",
            lambda r: f"{r['isolation_calls']:,}",
        ),
        (
            "records per answered call (mean)",
            lambda r: f"{sum(r['ok_sizes']) / len(r['ok_sizes']):.0f}" if r["ok_sizes"] else "-",
        ),
        ("drains by end status (worker INFO lines)", lambda r: _counts(r["drains_logged"])),
        (
            "writing / until drained",
            lambda r: (
                f"{r['write_s']:.0f} s / {r['drain_s']:.1f} s ({_ratio(r['drain_s'], alone['drain_s'])})"
                + (f", {r['backlog_left']:,} entries left" if r["backlog_left"] else "")
            ),
        ),
    ]
    return [[name, str(get(alone)), str(get(mix))] for name, get in measures]


def kind_rows(mix: Mapping[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind in KINDS:
        tally = mix["kinds"].get(kind)
        if tally is None:
            continue
        expected = "enqueue" if kind in REFUSED_AT_ENQUEUE else "Marketo"
        rows.append(
            [
                f"`{kind}`: {KIND_TEXT[kind]}",
                expected,
                tally["offered"],
                _counts(tally["refused"]),
                _counts(tally["statuses"]),
                "; ".join(f"{n:,}x {reason}" for reason, n in tally["failed"].most_common()) or "-",
            ]
        )
    return rows


def replay_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    def end(r: Mapping[str, Any], *wanted: str) -> int:
        return sum(n for k, n in r["ends"].items() if all(w in k for w in wanted))

    def city(r: Mapping[str, Any], cell: str) -> str:
        return cell if r["case"] == "city" else "n/a (no write sets City)"

    measures: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        ("people", lambda r: f"{r['people']:,}"),
        (
            "write 1 while every call faults 10001 (LEADSYNC_MAX_ATTEMPTS=1)",
            lambda r: _counts(r["write1_faulted"]),
        ),
        ("calls while faulting", lambda r: f"{r['fault_calls']:,}"),
        (
            "write 2 {Company: New}, faults off",
            lambda r: f"{_counts(r['write2'])} in {r['write2_calls']:,} calls",
        ),
        (
            "`leadsync dlq replay`: replayed / superseded",
            lambda r: (
                f"{r['cli']['replayed']} / {r['cli']['superseded']}"
                + (f" (rc {r['cli']['rc']})" if r["cli"]["rc"] else "")
            ),
        ),
        (
            "**calls the replay cost** (records in them)",
            lambda r: (
                f"**{r['replay_calls']:,}** ({r['replay_records']:,}); {_counts(r['replay_call_outcomes'])}"
            ),
        ),
        (
            "write-1 request ids after the replay",
            lambda r: (
                _counts(r["write1_after"])
                + (f"; codes {_counts(r['write1_codes'])}" if r["write1_codes"] else "")
            ),
        ),
        (
            "**write-1 ids terminal** (target N) / still DEAD_LETTERED (target 0)",
            lambda r: f"**{r['terminal']:,}** / {r['still_dead']:,}",
        ),
        (
            "**Marketo ends {Company: New, City: OldCity}** (target N)",
            lambda r: city(r, f"**{end(r, 'Company New', 'City OldCity'):,}**"),
        ),
        ("Marketo ends Company New (target N)", lambda r: f"{end(r, 'Company New'):,}"),
        ("City missing (target 0)", lambda r: city(r, f"{end(r, 'City missing'):,}")),
        ("**Company reverted to Old** (target 0)", lambda r: f"**{end(r, 'Company Old'):,}**"),
        ("Marketo's records", lambda r: _counts(r["ends"])),
        (
            "run (three drains)",
            lambda r: f"{r['run_s']:.0f} s" + ("" if r["drained"] else ", replay never drained"),
        ),
    ]
    return [[name, *(str(get(r)) for r in runs)] for name, get in measures]


def describe(args: argparse.Namespace) -> str:
    return (
        f"leadsync: {args.shards} shards, LEADSYNC_BATCH_SIZE={args.batch_size}, "
        f"LEADSYNC_FLUSH_INTERVAL_S={args.flush_interval_s:g}, LEADSYNC_MAX_CONCURRENT_CALLS="
        f"{args.max_concurrent}, LEADSYNC_FIELDS_REFRESH_S=0 (producers know no field list), "
        f"limits high; {args.workers} worker group(s) x {args.concurrency} processes; records "
        f"written in {args.waves} waves {args.pause_s:g} s apart while they drain. Simulator "
        f"{args.latency:g} s per call (+ up to half as much jitter), limits high, seed {args.seed}."
    )


def render(
    args: argparse.Namespace,
    alone: Mapping[str, Any] | None,
    mix: Mapping[str, Any] | None,
    replays: Sequence[Mapping[str, Any]],
) -> str:
    body = describe(args) + "\n\n"
    if alone is not None and mix is not None:
        body += (
            f"(a) {args.good:,} good upserts (distinct people, Company and City) interleaved at "
            f"random with {args.hostile:,} hostile ones ({len(KINDS)} kinds, an equal share each; "
            f"{len(UNKNOWN_NAMES)} distinct unknown attribute names), against the same good ones "
            "alone. The variant whose 20105 text quotes the names is not run: the simulator "
            "names them unquoted and has no setting for it.\n\n"
            + md_table(["measure", "good alone", "good + hostile"], mix_rows(alone, mix))
            + "\n\nBy hostile kind (refused: the field the InvalidLead names; FAILED: error code "
            "and Marketo's reason, numbers and unknown names folded):\n\n"
            + md_table(
                [
                    "kind",
                    "caught at",
                    "offered",
                    "refused at enqueue",
                    "accepted: outcomes",
                    "FAILED by",
                ],
                kind_rows(mix),
            )
            + "\n\n"
        )
    if replays:
        body += (
            f"(b) replay: {args.people:,} people; write 1 dead-lettered while every call faults "
            "10001 (LEADSYNC_MAX_ATTEMPTS=1), faults off, write 2 {Company: New} drains, then "
            "`leadsync dlq replay` (the CLI) and the drain. city: write 1 = {Company: Old, "
            "City: OldCity}; company: write 1 = {Company: Old}.\n\n"
            + md_table(["measure", *(r["case"] for r in replays)], replay_rows(replays))
            + "\n"
        )
    return body


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run hostile")
    parser.add_argument("--part", choices=("mix", "replay", "all"), default="all")
    parser.add_argument("--good", type=int, default=2000)
    parser.add_argument("--hostile", type=int, default=2000)
    parser.add_argument("--people", type=int, default=500, help="replay part")
    parser.add_argument("--replay-cases", default="city,company")
    waves.add_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=300)
    parser.add_argument("--flush-interval-s", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.05, help="simulator, per call")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="each drain")
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--no-write", action="store_true")
    parser.set_defaults(waves=4, pause_s=1.0, shards=4, workers=1, concurrency=2)
    args = parser.parse_args(argv)

    machine: list[str] = []
    alone = mix = None
    replays: list[dict[str, Any]] = []
    if args.part in ("mix", "all"):
        records = make_mix(args.good, args.hostile, args.seed)
        print("--- hostile: good alone", flush=True)
        alone = run_mix("good alone", [m for m in records if m[0] == "good"], args, machine)
        print(json.dumps(alone, default=str), flush=True)
        print("--- hostile: good + hostile", flush=True)
        mix = run_mix("good + hostile", records, args, machine)
        print(json.dumps(mix, default=str), flush=True)
    if args.part in ("replay", "all"):
        for case in args.replay_cases.split(","):
            print(f"--- hostile: replay, {case}", flush=True)
            replays.append(run_replay(case, args, machine))
            print(json.dumps(replays[-1], default=str), flush=True)
    body = render(args, alone, mix, replays)
    if args.json:
        args.json.write_text(
            json.dumps({"mix": [alone, mix], "replay": replays}, indent=1, default=str)
        )
    print(body)
    if not args.no_write:
        write_section("hostile", "hostile", machine[0], body)
