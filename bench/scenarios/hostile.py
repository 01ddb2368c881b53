"""``hostile``: what bad input costs the good records beside it, and what a dead-letter
replay restores (issue 18, "How it is measured").

Part ``mix``: G good upserts (distinct people, known fields ``Company`` and ``City``)
interleaved at random with H hostile ones, an equal share of each kind of :data:`KINDS`,
written through the real ``LeadProducer`` in waves while real Celery workers drain against
the simulator process. One kind, ``good_second_unknown``, is a good person's SECOND write
carrying an unknown field: it is placed right after that person's good write (same wave,
same shard), so the two are usually merged into one record, and only the bad write may
fail (52d1e46): the good write must still be delivered. Every run is on a fresh Redis and
simulator (``max_value_chars=255`` in all of them):

* ``good alone``: the same G good records alone (same order, same waves): the baseline.
* ``mix``: good + hostile, 20105 naming the unknown fields as Marketo documents
  (``unknown fields for import: A, B``); producers know no field list
  (``LEADSYNC_FIELDS_REFRESH_S=0``), so unknown attributes reach Marketo's 20105.
* ``mix, 'quoted'`` / ``mix, "quoted"``: the same, the simulator quoting each name
  (``unknown_field_quotes`` single / double).
* ``mix, fields learned``: the same, ``LEADSYNC_FIELDS_REFRESH_S`` at its default: the
  worker's describe at start stores the instance's fields (the bench waits for them), and
  producers refuse an unknown field at enqueue.
* ``good + too long``: the G good records and ``--too-long`` records whose Company is longer
  than the simulator's ``max_value_chars`` (a simulator rule: SOAP 20110, naming no field),
  so only bisection can find them.

A refusal at enqueue is the producer's ``InvalidLead`` (the field it names is read again
from ``validate_lead`` and, with fields learned, the learned set; ``waves.write_and_drain``
keeps only the request ids). Calls come from the simulator's call log; isolation calls
from the call log (calls carrying only records of an earlier faulted call) and from the
``isolation_calls=`` of the workers' drain INFO lines (one-shard and cross-shard drains
both print it). A BATCH is a call that carries no record of an earlier faulted call,
with the calls that resend its records (a call tree); its bad fields are the distinct
unknown names its records carry.

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
from producers.known_fields import KnownFields, decode_known_fields
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
#: A good person's second write, carrying an unknown field (right after the good write).
SECOND_WRITE = "good_second_unknown"
FAILED_BY_MARKETO = ("unknown_field", "unknown_id", "rejected_email", SECOND_WRITE)
KINDS = (*REFUSED_AT_ENQUEUE, *FAILED_BY_MARKETO)
#: The kind only bisection finds (its own run): a value longer than the simulator's limit.
TOO_LONG = "too_long"
#: The simulator's max_value_chars in every run (Marketo's string fields hold 255).
MAX_VALUE_CHARS = 255
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
    SECOND_WRITE: "a good person's second write: Company + one of "
    f"{len(UNKNOWN_NAMES)} unknown attributes",
    TOO_LONG: f"Company of {MAX_VALUE_CHARS + 45} characters (simulator: 20110, no field named)",
}
#: The runs of part ``mix``, in order: (name, column head).
RUNS = {
    "alone": "good alone",
    "mix": "good + hostile",
    "single": "good + hostile, 'quoted'",
    "double": 'good + hostile, "quoted"',
    "learned": "good + hostile, fields learned",
    "bisect": "good + too long",
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
    if kind == TOO_LONG:
        return {"email": email, "attributes": {"Company": "L" * (MAX_VALUE_CHARS + 45)}}
    raise ValueError(f"unknown kind {kind}")


def second_write(person: int) -> dict[str, Any]:
    """Good person ``person``'s second write: a new Company and one unknown attribute."""
    name = UNKNOWN_NAMES[person % len(UNKNOWN_NAMES)]
    return {
        "email": good_record(person)["email"],
        "attributes": {"Company": f"Second Co {person}", name: "x"},
    }


def make_mix(
    good: int, hostile: int, seed: int, kinds: Sequence[str] = KINDS
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, record): ``good`` good ones and ``hostile`` hostile ones, an equal share of
    each of ``kinds``, shuffled together; a :data:`SECOND_WRITE` goes right after the good
    write of its person (the n-th to good person n)."""
    mix = [("good", good_record(i)) for i in range(good)]
    seconds: dict[str, dict[str, Any]] = {}
    for i in range(hostile):
        kind = kinds[i % len(kinds)]
        if kind == SECOND_WRITE:
            if len(seconds) < good:
                record = second_write(len(seconds))
                seconds[record["email"]] = record
            continue
        mix.append((kind, hostile_record(i, kind)))
    random.Random(seed).shuffle(mix)
    placed: list[tuple[str, dict[str, Any]]] = []
    for kind, record in mix:
        placed.append((kind, record))
        if kind == "good" and record["email"] in seconds:
            placed.append((SECOND_WRITE, seconds[record["email"]]))
    return placed


def with_too_long(good: int, too_long: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``good`` good records and ``too_long`` :data:`TOO_LONG` ones, shuffled together."""
    mix = [("good", good_record(i)) for i in range(good)]
    mix += [(TOO_LONG, hostile_record(i, TOO_LONG)) for i in range(too_long)]
    random.Random(seed).shuffle(mix)
    return mix


def refusal_field(record: Mapping[str, Any], known: KnownFields | None = None) -> str:
    """The field the contract's InvalidLead names for ``record`` ("-" when it passes), with
    the ``known`` fields a producer learned, if any."""
    try:
        lead = validate_lead(**record)
        if known is not None:
            known.check(lead)
    except InvalidLead as exc:
        field = re.sub(r"\d+", "<n>", exc.field)
        for name in UNKNOWN_NAMES:
            field = field.replace(name, "<unknown>")
        return field
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
    return sum(len(tree) - 1 for tree in call_trees(calls))


def call_trees(calls: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The calls (in the order they started) grouped by batch: a call that carries only
    records of an earlier faulted call joins that call's batch, any other starts one."""
    trees: list[list[Mapping[str, Any]]] = []
    faulted: list[tuple[frozenset[str], int]] = []
    for call in calls:
        keys = frozenset(call.get("keys") or ())
        tree = next((t for earlier, t in reversed(faulted) if keys and keys <= earlier), None)
        if tree is None:
            trees.append([])
            tree = len(trees) - 1
        trees[tree].append(call)
        if call["fault_code"] is not None:
            faulted.append((keys, tree))
    return trees


def batch_costs(
    calls: Sequence[Mapping[str, Any]], names_of: Mapping[str, frozenset[str]]
) -> dict[str, Any]:
    """Per batch with a record fault (a call tree whose calls faulted): its calls, and for
    20105 batches its bad fields (the distinct unknown names its first call's records
    carry, ``names_of`` a lead key's names) and calls per bad field."""
    per_field: list[float] = []
    sizes_20105: list[int] = []
    sizes_other: list[int] = []
    for tree in call_trees(calls):
        codes = {c["fault_code"] for c in tree if c["fault_code"] is not None}
        if not codes:
            continue
        if 20105 in codes:
            fields = frozenset().union(
                *(names_of.get(str(k).lower(), frozenset()) for k in tree[0].get("keys") or ())
            )
            sizes_20105.append(len(tree))
            per_field.append(len(tree) / max(len(fields), 1))
        else:
            sizes_other.append(len(tree))
    return {
        "batches_20105": len(sizes_20105),
        "max_calls_20105": max(sizes_20105, default=0),
        "max_calls_per_field": max(per_field, default=0.0),
        "mean_calls_per_field": sum(per_field) / len(per_field) if per_field else 0.0,
        "batches_bisected": len(sizes_other),
        "max_calls_bisected": max(sizes_other, default=0),
        "calls_bisected": sum(sizes_other),
    }


def isolation_calls(workers: Sequence[Any]) -> int:
    """The ``isolation_calls=`` of every drain INFO line of ``workers``, summed."""
    total = 0
    for worker in workers:
        log = WORKDIR / f"{worker.name}.log"
        if log.exists():
            total += sum(int(n) for n in ISOLATION_RE.findall(log.read_text(errors="replace")))
    return total


def learned_fields(client: redis.Redis) -> KnownFields | None:
    """The fields a worker learned from the simulator's describe, if stored."""
    _, known = decode_known_fields(client.hgetall(Keys(LEADSYNC_PREFIX).known_fields()))
    return known


def run_mix(
    run: str,
    mix: Sequence[tuple[str, Mapping[str, Any]]],
    args: argparse.Namespace,
    machine: list[str],
) -> dict[str, Any]:
    """Write ``mix`` in waves while the workers drain, as run ``run`` (:data:`RUNS`) sets
    the simulator and leadsync; tally by kind."""
    records = [record for _, record in mix]
    sim_config = {
        **waves.quiet_sim(args.latency, args.seed),
        "max_value_chars": MAX_VALUE_CHARS,
        "unknown_field_quotes": run if run in ("single", "double") else "none",
    }
    known: KnownFields | None = None
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        if not machine:
            machine.append(machine_line(redis_url))
        env = leadsync_env(redis_url, sim, shards=args.shards, **settings_of(args))
        if run == "learned":
            del env["LEADSYNC_FIELDS_REFRESH_S"]  # its default: learn at start, every 6 h
        group = [leadsync_worker(env, args.concurrency) for _ in range(args.workers)]
        with (
            contextlib.closing(redis.Redis.from_url(redis_url)) as client,
            running(group) as workers,
        ):
            if run == "learned":
                wait_until(lambda: learned_fields(client) is not None, 60, 0.1)
                known = learned_fields(client)
                if known is None:
                    raise RuntimeError("the workers learned no fields in 60 s")
            written = waves.write_and_drain(
                redis_url, env, records, args, pause_after_last=False, no_outcome="NONE"
            )
        outcomes = iter(read_outcomes(redis_url, written.ids, args.shards))
        every_call = sim.admin.calls()
        calls = [c for c in every_call if c.get("operation", "sync") == "sync"]
        db = {str(lead["email"]).lower(): lead for lead in sim.admin.leads() if lead.get("email")}

    names_of: dict[str, frozenset[str]] = {}
    for record in records:
        if "email" in record:
            key = f"email:{str(record['email']).strip().lower()}"
            unknown = frozenset(n for n in record["attributes"] if n in UNKNOWN_NAMES)
            names_of[key] = names_of.get(key, frozenset()) | unknown
    first_call: dict[str, Mapping[str, Any]] = {}
    for call in calls:
        for key in call.get("keys") or ():
            first_call.setdefault(str(key).lower(), call)

    kinds: dict[str, dict[str, Any]] = {}
    good_held = 0
    paired = {str(r["email"]).lower() for kind, r in mix if kind == SECOND_WRITE and "email" in r}
    pair: dict[str, Any] = {"people": len(paired), "good": Counter(), "merged": 0}
    for (kind, record), rid in zip(mix, written.ids, strict=True):
        tally = kinds.setdefault(
            kind, {"offered": 0, "refused": Counter(), "statuses": Counter(), "failed": Counter()}
        )
        tally["offered"] += 1
        email = str(record.get("email", "")).lower()
        if rid is None:
            tally["refused"][refusal_field(record, known)] += 1
            if kind == "good" and email in paired:
                pair["good"]["refused"] += 1
            continue
        outcome = next(outcomes)
        status = outcome.status.value if outcome is not None else "NONE"
        tally["statuses"][status] += 1
        if status == "FAILED" and outcome is not None:
            code = outcome.error_code or "no code"
            tally["failed"][f"{code}: {_reason(outcome.error)}"] += 1
        if kind != "good":
            continue
        lead = db.get(email)
        if lead and all(lead["attributes"].get(k) == v for k, v in record["attributes"].items()):
            good_held += 1
        if email in paired:
            pair["good"][status] += 1
            first = first_call.get(f"email:{email}")
            if first is not None and first["fault_code"] == 20105:
                pair["merged"] += 1
    return {
        "run": run,
        "kinds": kinds,
        "good_held": good_held,
        "pair": pair,
        "calls": len(calls),
        "describe_calls": sum(1 for c in every_call if c.get("operation") == "describe"),
        "learned": known.count if known is not None else None,
        "call_outcomes": dict(Counter(str(c["fault_code"] or c["outcome"]) for c in calls)),
        "calls_20105": sum(1 for c in calls if c["fault_code"] == 20105),
        "calls_20110": sum(1 for c in calls if c["fault_code"] == 20110),
        "batches": batch_costs(calls, names_of),
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


def _pair_cell(r: Mapping[str, Any]) -> str:
    pair = r["pair"]
    if not pair["people"]:
        return "-"
    good = pair["good"]
    delivered = sum(good.get(s, 0) for s in SUCCESS)
    other = sum(good.values()) - delivered
    second = r["kinds"].get(SECOND_WRITE, {})
    return (
        f"**{delivered:,}** of {pair['people']:,}"
        + (f" ({_counts(good)})" if other else "")
        + f"; merged {pair['merged']:,}; second writes {_counts(second.get('statuses', {}))}"
        + (
            f", refused {sum(second['refused'].values()):,}"
            if sum(second.get("refused", {}).values())
            else ""
        )
    )


def _kind_cell(r: Mapping[str, Any], kind: str) -> str:
    tally = r["kinds"].get(kind)
    if tally is None:
        return "-"
    refused = sum(tally["refused"].values())
    return (f"refused {refused:,}; " if refused else "") + _counts(tally["statuses"])


def mix_rows(alone: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """(measure, good alone, each run) rows."""
    unknown = len(UNKNOWN_NAMES)
    hostile = (*KINDS, TOO_LONG)
    measures: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        (
            "upserts offered (good + hostile)",
            lambda r: f"{sum(k['offered'] for k in r['kinds'].values()):,}",
        ),
        (
            "refused at enqueue (InvalidLead)",
            lambda r: f"{_sum(r, (*hostile, 'good'), 'refused'):,}",
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
        (
            "good people Marketo holds with their good write's Company and City",
            lambda r: f"{r['good_held']:,}",
        ),
        (
            f"**people whose second write carries an unknown field: good write CREATED/UPDATED** "
            f"(target: all); merged with the bad write in one record (the person's first call "
            f"faulted 20105); the second writes (`{SECOND_WRITE}`)",
            _pair_cell,
        ),
        (
            "`unknown_field` records (their own people)",
            lambda r: _kind_cell(r, "unknown_field"),
        ),
        (
            f"`{TOO_LONG}` records (a value over max_value_chars={MAX_VALUE_CHARS})",
            lambda r: _kind_cell(r, TOO_LONG),
        ),
        (
            "hostile accepted and CREATED/UPDATED (target 0)",
            lambda r: f"{_sum(r, hostile, 'statuses', SUCCESS):,}",
        ),
        ("hostile accepted and FAILED", lambda r: f"{_sum(r, hostile, 'statuses', ('FAILED',)):,}"),
        (
            "calls (simulator call log, sync calls)",
            lambda r: f"{r['calls']:,} ({_ratio(r['calls'], alone['calls'])})",
        ),
        ("calls by outcome", lambda r: _counts(r["call_outcomes"])),
        (
            "describe calls (fields learned) / fields learned",
            lambda r: (
                f"{r['describe_calls']:,} / {r['learned'] if r['learned'] is not None else '-'}"
            ),
        ),
        ("calls that faulted 20105", lambda r: f"{r['calls_20105']:,}"),
        (
            "batches with a 20105: count / most calls in one",
            lambda r: (
                f"{r['batches']['batches_20105']:,} / {r['batches']['max_calls_20105']:,}"
                if r["batches"]["batches_20105"]
                else "-"
            ),
        ),
        (
            "**calls per batch per bad field** (a batch's calls / the distinct unknown names "
            "its records carry): mean / max (target <= 3)",
            lambda r: (
                f"{r['batches']['mean_calls_per_field']:.2f} / "
                f"**{r['batches']['max_calls_per_field']:.2f}**"
                if r["batches"]["batches_20105"]
                else "-"
            ),
        ),
        (
            f"20105 calls per distinct unknown field ({unknown})",
            lambda r: f"{r['calls_20105'] / unknown:.1f}" if r["calls_20105"] else "-",
        ),
        (
            "calls that faulted 20110 (a too-long value; bisection)",
            lambda r: f"{r['calls_20110']:,}",
        ),
        (
            "bisected batches: count / most calls in one / calls in them",
            lambda r: (
                "{:,} / {:,} / {:,}".format(
                    r["batches"]["batches_bisected"],
                    r["batches"]["max_calls_bisected"],
                    r["batches"]["calls_bisected"],
                )
                if r["batches"]["batches_bisected"]
                else "-"
            ),
        ),
        (
            "extra calls vs good alone",
            lambda r: f"{r['calls'] - alone['calls']:+,}" if r is not alone else "-",
        ),
        (
            "isolation calls (call log: calls carrying only records of an earlier faulted "
            "call, a later cycle's too)",
            lambda r: f"{r['resends']:,}",
        ),
        (
            "isolation_calls= summed over the workers' drain INFO lines (the extra calls "
            "within the faulted call's cycle)",
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
    return [[name, *(str(get(r)) for r in (alone, *runs))] for name, get in measures]


def kind_rows(mix: Mapping[str, Any], bisect: Mapping[str, Any] | None) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind, run in [*((k, mix) for k in KINDS), (TOO_LONG, bisect)]:
        tally = run["kinds"].get(kind) if run is not None else None
        if tally is None:
            continue
        expected = "enqueue" if kind in REFUSED_AT_ENQUEUE else "Marketo"
        rows.append(
            [
                f"`{kind}`: {KIND_TEXT[kind]}"
                + (" (run good + too long)" if run is bisect else ""),
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
        f"{args.max_concurrent}, LEADSYNC_FIELDS_REFRESH_S=0 (producers know no field list; "
        f"the fields-learned run leaves it at its default), limits high; {args.workers} worker "
        f"group(s) x {args.concurrency} processes; records written in {args.waves} waves "
        f"{args.pause_s:g} s apart while they drain. Simulator {args.latency:g} s per call "
        f"(+ up to half as much jitter), limits high, max_value_chars={MAX_VALUE_CHARS} (its "
        f"own rule: a longer SOAP value faults the call with 20110, naming no field), seed "
        f"{args.seed}; every run its own Redis and simulator."
    )


def render(
    args: argparse.Namespace,
    results: Mapping[str, Mapping[str, Any]],
    replays: Sequence[Mapping[str, Any]],
) -> str:
    body = describe(args) + "\n\n"
    alone = results.get("alone")
    runs = [results[name] for name in RUNS if name != "alone" and name in results]
    if alone is not None and runs:
        seconds = args.hostile // len(KINDS)
        body += (
            f"(a) {args.good:,} good upserts (distinct people, Company and City) interleaved at "
            f"random with {args.hostile:,} hostile ones ({len(KINDS)} kinds, an equal share each "
            f"(about {seconds:,}); {len(UNKNOWN_NAMES)} distinct unknown attribute names; "
            f"`{SECOND_WRITE}` is a good person's second write, placed right after the good "
            "one), against the same good ones alone. 'quoted' / \"quoted\": the simulator's "
            "20105 text quotes each name (`unknown_field_quotes` single / double). Fields "
            "learned: LEADSYNC_FIELDS_REFRESH_S at its default, the worker's describe stored "
            "the fields before the first write, producers refuse an unknown field at enqueue. "
            f"Good + too long: the good ones with {args.too_long:,} records whose Company is "
            f"longer than {MAX_VALUE_CHARS} characters (20110 names no field: bisection). A "
            "batch = a call carrying no record of an earlier faulted call, with the calls that "
            "resend its records.\n\n"
            + md_table(
                ["measure", *(RUNS[r["run"]] for r in (alone, *runs))], mix_rows(alone, runs)
            )
            + "\n\nBy hostile kind, run good + hostile (and good + too long for "
            f"`{TOO_LONG}`; refused: the field the InvalidLead names; FAILED: error code and "
            "Marketo's reason, numbers and unknown names folded):\n\n"
            + md_table(
                [
                    "kind",
                    "caught at",
                    "offered",
                    "refused at enqueue",
                    "accepted: outcomes",
                    "FAILED by",
                ],
                kind_rows(results.get("mix") or runs[0], results.get("bisect")),
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
    parser.add_argument(
        "--too-long", type=int, default=20, help="records too long for a field (run bisect)"
    )
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"part mix: some of {', '.join(RUNS)} (alone always runs)",
    )
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
    chosen = ["alone", *(r for r in args.runs.split(",") if r and r != "alone")]
    if unknown := [r for r in chosen if r not in RUNS]:
        parser.error(f"unknown runs: {', '.join(unknown)}")

    machine: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    replays: list[dict[str, Any]] = []
    if args.part in ("mix", "all"):
        mix = make_mix(args.good, args.hostile, args.seed)
        for run in (r for r in RUNS if r in chosen):
            if run == "alone":
                records = [m for m in mix if m[0] == "good"]
            elif run == "bisect":
                records = with_too_long(args.good, args.too_long, args.seed)
            else:
                records = mix
            print(f"--- hostile: {RUNS[run]}", flush=True)
            results[run] = run_mix(run, records, args, machine)
            print(json.dumps(results[run], default=str), flush=True)
    if args.part in ("replay", "all"):
        for case in args.replay_cases.split(","):
            print(f"--- hostile: replay, {case}", flush=True)
            replays.append(run_replay(case, args, machine))
            print(json.dumps(replays[-1], default=str), flush=True)
    body = render(args, results, replays)
    if args.json:
        args.json.write_text(json.dumps({"mix": results, "replay": replays}, indent=1, default=str))
    print(body)
    if not args.no_write:
        write_section("hostile", "hostile", machine[0], body)
