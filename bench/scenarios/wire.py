"""``wire``: what reaches Marketo when the wire misbehaves, over SOAP and over REST.

Two parts, each against the same workload (N upserts over P people, write ``n`` of person
``p`` sets ``Company`` to ``"person<p> write <n>"`` and ``Title`` to ``"write <n>"``), written
through the real ``LeadProducer`` in waves while real Celery worker groups drain against
the simulator process (as ``lww``). Every run has its own private ``redis-server`` and
simulator, and the same leadsync settings (but the ``defaults`` run); the runs differ in
the simulator:

* ``clean``: no fault, every reply in one piece (``reply_chunk_bytes=0``). The reference
  of both parts.
* ``split``: the simulator writes every reply in pieces of ``reply_chunk_bytes`` with
  ``reply_chunk_gap_s`` between them (a slow or fragmenting network path). Nothing is
  wrong with the reply: calls, outcomes and what Marketo holds should equal ``clean``.
* ``504 after D s``: ``fault_gateway_504_rate`` of the calls are answered HTTP 504 at once
  (a gateway that gave up) while the simulator applies them D seconds later. The client
  cannot know whether such a call was applied: if it sends those records again at once, or
  sends a newer write of the same person before the old call lands, an older write can be
  applied after a newer one. leadsync is given ``LEADSYNC_UNKNOWN_OUTCOME_REST_S`` (how long
  a shard rests after a call whose outcome is unknown) of at least the largest D plus a
  margin; a tree that does not know the setting ignores it.
* ``504 after D s, defaults`` (``--defaults-delay``, 5 s): the same gateway fault with
  leadsync's own defaults for the three settings the other runs shorten
  (``LEADSYNC_REQUEST_TIMEOUT_S`` 60, ``LEADSYNC_UNKNOWN_OUTCOME_REST_S`` 120,
  ``LEADSYNC_LEASE_TTL_S`` 120: none of them is set), so the cost at the defaults shows:
  every shard of a 504 rests two minutes, and its concurrency slot stays taken as long.
  Its drain may take ``--defaults-timeout-s``.

Definitions (all read from the simulator's admin API after the run; ``/admin/leads`` keeps
each lead's write history with the call that applied it):

* RE-SENT record: a write the simulator applied to a lead that it had already applied to
  that lead before with the same values (same ``Company`` and ``Title``, i.e. the same
  write number; leadsync merges a person's writes within a batch, so a record carries the
  newest write merged into it). A call that re-sent = a call that applied at least one
  re-sent record. Each write is applied once in a run without re-sends.
* STALE person: the person's last write ended CREATED/UPDATED but Marketo holds another
  write. Older-after-newer: the person's history applied a lower write number after a
  higher one (a later write may have repaired it).
* Without a terminal outcome: a request id whose outcome is not CREATED, UPDATED or FAILED
  (PENDING, DEAD_LETTERED, none).
* Keys in two calls at once: the simulator's ``keys_in_concurrent_calls``.
* Call sizes (simulator call log): full calls (``--batch-size`` records) and partial ones.
  A split reply takes longer to read, so a drain holds its shards longer and the next
  partial batches fill differently: split and unsplit runs may differ by a call or so with
  the same records sent; the sizes show where.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import waves
from bench.harness import (
    SimProcess,
    code_version,
    command_line,
    machine_line,
    md_table,
    wait_until,
    write_section,
)
from bench.systems import (
    add_api_argument,
    api_list,
    leadsync_env,
    leadsync_worker,
    sim_token_fields,
)
from marketo_sim.embedded import embedded_redis

PARTS = ("split", "gateway")
TERMINAL = ("CREATED", "UPDATED", "FAILED")
#: The settings a run at leadsync's defaults leaves unset (their defaults: 60, 120, 120 s).
DEFAULTED = ("request_timeout_s", "unknown_outcome_rest_s", "lease_ttl_s")


# --- the runs ------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(run label, simulator fields of that run) in the order they run; a label ending in
    ``defaults`` runs with leadsync's defaults for :data:`DEFAULTED`."""
    runs: list[tuple[str, dict[str, Any]]] = [("clean", {"reply_chunk_bytes": 0})]
    if args.part in ("split", "all"):
        runs.append(
            (
                "split",
                {
                    "reply_chunk_bytes": args.chunk_bytes,
                    "reply_chunk_gap_s": args.chunk_gap_s,
                },
            )
        )
    if args.part in ("gateway", "all"):
        runs += [
            (
                gateway_label(delay),
                {
                    "reply_chunk_bytes": 0,
                    "fault_gateway_504_rate": args.gateway_rate,
                    "gateway_apply_delay_s": delay,
                },
            )
            for delay in args.delays
        ]
        if args.defaults_delay is not None:
            runs.append(
                (
                    defaults_label(args.defaults_delay),
                    {
                        "reply_chunk_bytes": 0,
                        "fault_gateway_504_rate": args.gateway_rate,
                        "gateway_apply_delay_s": args.defaults_delay,
                    },
                )
            )
    return runs


def gateway_label(delay: float) -> str:
    return f"504 after {delay:g} s"


def defaults_label(delay: float) -> str:
    return f"504 after {delay:g} s, defaults"


def gateway_labels(args: argparse.Namespace) -> list[str]:
    """The gateway runs' labels, in order (part (b)'s columns after fault-free)."""
    labels = [gateway_label(d) for d in args.delays]
    if args.defaults_delay is not None:
        labels.append(defaults_label(args.defaults_delay))
    return labels


def at_defaults(label: str) -> bool:
    return label.endswith(", defaults")


def rest_s(args: argparse.Namespace) -> float:
    """LEADSYNC_UNKNOWN_OUTCOME_REST_S: --rest-s, else the largest delay + --rest-margin-s."""
    if args.rest_s is not None:
        return float(args.rest_s)
    return max(args.delays, default=0.0) + args.rest_margin_s


def lease_ttl_s(args: argparse.Namespace) -> float:
    """Above what the settings check asks (request timeout + 3 Redis timeouts + 1 s) and
    above the rest, with room to spare."""
    if args.lease_ttl_s is not None:
        return float(args.lease_ttl_s)
    return max(args.request_timeout_s + 3 * 1 + 1, rest_s(args)) + 6


def settings_of(args: argparse.Namespace, *, defaults: bool = False) -> dict[str, Any]:
    """leadsync's settings, the same in every run; ``defaults`` leaves :data:`DEFAULTED`
    unset (leadsync's own defaults)."""
    settings = {
        "batch_size": args.batch_size,
        "rate_limit_calls": 100_000,
        "rate_limit_window_s": 20,
        "max_concurrent_calls": args.max_concurrent,
        "daily_quota": 10_000_000,
        "request_timeout_s": args.request_timeout_s,
        "unknown_outcome_rest_s": rest_s(args),
        "lease_ttl_s": lease_ttl_s(args),
        "flush_interval_s": args.flush_interval_s,
        **waves.FAST_RECOVERY,  # as lww: a transient fault costs seconds; INFO drain lines
    }
    if defaults:
        for name in DEFAULTED:
            del settings[name]
    return settings


def timing_of(settings: Mapping[str, Any]) -> dict[str, float]:
    """The three DEFAULTED settings a run had (leadsync's default where unset)."""
    from worker.settings import Settings

    fields = Settings.model_fields
    return {name: float(settings.get(name, fields[name].default)) for name in DEFAULTED}


def run_one(
    api: str,
    label: str,
    sim_extra: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    args: argparse.Namespace,
    seen_machine: list[str],
) -> dict[str, Any]:
    """One run: write the waves, wait for the drain, compare Marketo with the writes."""
    sim_config: dict[str, Any] = {
        **waves.quiet_sim(args.latency, args.seed),
        **sim_token_fields(args),
        **sim_extra,
    }
    settings = settings_of(args, defaults=at_defaults(label))
    drain_args = args
    if at_defaults(label):
        drain_args = argparse.Namespace(**{**vars(args), "timeout_s": args.defaults_timeout_s})
    with embedded_redis() as (redis_url, _), SimProcess(**sim_config) as sim:
        if not seen_machine:
            seen_machine.append(machine_line(redis_url))
        env = leadsync_env(redis_url, sim, shards=args.shards, api=api, **settings)
        workers = [leadsync_worker(env, args.concurrency).start() for _ in range(args.workers)]

        def tick(elapsed: float) -> None:
            for worker in workers:
                worker.check_alive()

        try:
            for worker in workers:
                worker.wait_ready()
            written = waves.write_and_drain(
                redis_url,
                env,
                records,
                drain_args,
                tick=tick,
                pause_after_last=False,
                no_outcome="NONE",
            )
        finally:
            for worker in workers:
                worker.stop()
        # A call answered 504 is applied later (and stays in flight until then): let the
        # last ones land before reading the leads.
        late = float(sim_extra.get("gateway_apply_delay_s", 0.0))
        wait_until(lambda: int(sim.admin.summary().get("in_flight", 0)) == 0, late + 5, 0.2)
        summary = sim.admin.summary()
        db = sim.admin.leads()
        calls = sim.admin.calls()

    result = tally(records, written.ids, written.statuses, summary, db, calls, args.batch_size)
    result.update(
        {
            "api": api,
            "run": label,
            "sim": dict(sim_extra),
            "timing": timing_of(settings),
            "drains_logged": waves.drains_logged(workers),
            "write_s": written.write_s,
            "drain_s": written.drain_s,
            "backlog_left": written.backlog_left,
        }
    )
    return result


def tally(
    records: Sequence[Mapping[str, Any]],
    ids: Sequence[str | None],
    status_of: Sequence[str],
    summary: Mapping[str, Any],
    db: Sequence[Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    batch_size: int = 300,
) -> dict[str, Any]:
    """The figures of one run (see the module docstring for the definitions)."""
    compared = waves.compare(records, ids, status_of, db, also=("Title",))
    out_of_order = 0
    applied = resent = 0
    resent_calls: set[int] = set()
    for found in compared.by_email.values():
        history = [w for lead in found for w in lead["history"]]
        if waves.older_after_newer(history):
            out_of_order += 1
        seen: set[tuple[object, object]] = set()
        for write in history:
            values = (write["attributes"].get("Company"), write["attributes"].get("Title"))
            applied += 1
            if values in seen:
                resent += 1
                resent_calls.add(int(write["call_id"]))
            seen.add(values)

    sync_calls = [c for c in calls if c.get("operation", "sync") == "sync"]
    upserts = sum(1 for r in ids if r is not None)
    sizes = [len(c.get("keys") or ()) for c in sync_calls]
    return {
        "people": len(compared.last),
        "upserts": upserts,
        "calls": len(sync_calls),
        "call_outcomes": dict(sorted(Counter(str(c["outcome"]) for c in sync_calls).items())),
        "records_sent": sum(sizes),
        "call_sizes": sizes,
        "full_calls": sum(1 for n in sizes if n >= batch_size),
        "records_applied": applied,
        "resent_records": resent,
        "resent_calls": len(resent_calls),
        "keys_in_concurrent_calls": int(summary.get("keys_in_concurrent_calls", 0)),
        "stale": len(compared.stale),
        "stale_older": compared.stale_older,
        "stale_examples": compared.stale_examples,
        "missing": compared.missing,
        "last_not_success": compared.not_success,
        "out_of_order": out_of_order,
        "duplicate_leads": compared.duplicate_leads,
        "statuses": dict(sorted(Counter(status_of).items())),
        "dead_letters": sum(1 for s in status_of if s == "DEAD_LETTERED"),
        "without_terminal": sum(1 for s in status_of if s not in TERMINAL),
        "identity": dict(summary.get("identity") or {}),
    }


# --- the tables ----------------------------------------------------------------------------


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "-"


def _versus(value: float, reference: float, unit: str = "") -> str:
    if not reference:
        return f"{value:,.0f}{unit}"
    return f"{value:,.0f}{unit} ({value / reference:.2f}x)"


def rows_split(clean: Mapping[str, Any], split: Mapping[str, Any]) -> list[list[str]]:
    """(measure, clean, split) rows of part (a)."""
    measures: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        ("people / upserts", lambda r: f"{r['people']:,} / {r['upserts']:,}"),
        ("calls (simulator call log; target: = unsplit)", lambda r: f"{r['calls']:,}"),
        ("calls by outcome (simulator)", lambda r: _counts(r["call_outcomes"])),
        ("full calls / partial calls (call log)", _sizes_cell),
        (
            "**calls that re-sent** applied records / records re-sent (target 0)",
            lambda r: f"**{r['resent_calls']:,}** / {r['resent_records']:,}",
        ),
        (
            "records sent / applied (simulator)",
            lambda r: f"{r['records_sent']:,} / {r['records_applied']:,}",
        ),
        ("**dead letters** (outcomes DEAD_LETTERED; target 0)", lambda r: r["dead_letters"]),
        ("outcomes by status (target: = unsplit)", lambda r: _counts(r["statuses"])),
        ("request ids without a terminal outcome", lambda r: r["without_terminal"]),
        ("stale people / older write applied after a newer", _stale_cell),
        ("drains by end status (worker INFO lines)", lambda r: _counts(r["drains_logged"])),
        ("writing / until drained (vs unsplit)", lambda r: _time_cell(r, clean)),
    ]
    return [[name, *(str(get(r)) for r in (clean, split))] for name, get in measures]


def rows_gateway(clean: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """(measure, fault-free, one value per delay) rows of part (b)."""
    columns = [clean, *runs]
    measures: list[tuple[str, Callable[[Mapping[str, Any]], object]]] = [
        ("people / upserts", lambda r: f"{r['people']:,} / {r['upserts']:,}"),
        (
            "LEADSYNC_REQUEST_TIMEOUT_S / _UNKNOWN_OUTCOME_REST_S / _LEASE_TTL_S",
            lambda r: " / ".join(f"{r['timing'][name]:g} s" for name in DEFAULTED),
        ),
        (
            "**keys in two calls at once** (simulator; target 0)",
            lambda r: f"**{r['keys_in_concurrent_calls']:,}**",
        ),
        (
            "**STALE**: last write CREATED/UPDATED, Marketo holds another (target 0)",
            lambda r: (
                f"**{r['stale']:,}**" + (f" ({r['stale_older']:,} older)" if r["stale"] else "")
            ),
        ),
        ("people with an older write applied after a newer one", lambda r: r["out_of_order"]),
        (
            "request ids without a terminal outcome (target 0)",
            lambda r: r["without_terminal"],
        ),
        ("outcomes by status", lambda r: _counts(r["statuses"])),
        ("calls (vs fault-free)", lambda r: _versus(r["calls"], clean["calls"])),
        ("calls by outcome (simulator)", lambda r: _counts(r["call_outcomes"])),
        (
            "calls that re-sent applied records / records re-sent",
            lambda r: f"{r['resent_calls']:,} / {r['resent_records']:,}",
        ),
        ("missing: last write CREATED/UPDATED, absent in Marketo", lambda r: r["missing"]),
        ("drains by end status (worker INFO lines)", lambda r: _counts(r["drains_logged"])),
        ("writing / until drained (vs fault-free)", lambda r: _time_cell(r, clean)),
    ]
    return [[name, *(str(get(r)) for r in columns)] for name, get in measures]


def _time_cell(r: Mapping[str, Any], clean: Mapping[str, Any]) -> str:
    left = f", {r['backlog_left']:,} entries left" if r["backlog_left"] else ""
    return f"{r['write_s']:.0f} s / " + _versus(r["drain_s"], clean["drain_s"], " s") + left


def _stale_cell(r: Mapping[str, Any]) -> str:
    return f"{r['stale']:,} / {r['out_of_order']:,}"


def _sizes_cell(r: Mapping[str, Any]) -> str:
    return f"{r['full_calls']:,} / {r['calls'] - r['full_calls']:,}"


def split_note(
    api: str, clean: Mapping[str, Any], split: Mapping[str, Any], batch_size: int
) -> str:
    """Where split and unsplit differ in calls: the partial calls' sizes (call log)."""

    def partial(r: Mapping[str, Any]) -> str:
        sizes = sorted(n for n in r["call_sizes"] if n < batch_size)
        return ", ".join(str(n) for n in sizes) or "none"

    same = "the same" if clean["records_sent"] == split["records_sent"] else "not the same"
    return (
        f"{api}: unsplit {clean['calls']} calls ({clean['full_calls']} full), split "
        f"{split['calls']} ({split['full_calls']} full), {same} records sent "
        f"({clean['records_sent']:,} / {split['records_sent']:,}); partial calls' sizes "
        f"unsplit [{partial(clean)}], split [{partial(split)}]."
    )


def describe(args: argparse.Namespace, apis: Sequence[str]) -> str:
    return (
        f"{args.upserts:,} upserts over {args.people:,} people (write n sets Company "
        f"`person<p> write <n>` and Title `write <n>`), in {args.waves} waves "
        f"{args.pause_s:g} s apart while {args.workers} worker groups x {args.concurrency} "
        f"processes drain; {args.shards} shards, LEADSYNC_BATCH_SIZE={args.batch_size}, "
        f"LEADSYNC_FLUSH_INTERVAL_S={args.flush_interval_s:g}, "
        f"LEADSYNC_MAX_CONCURRENT_CALLS={args.max_concurrent}, "
        f"LEADSYNC_REQUEST_TIMEOUT_S={args.request_timeout_s:g}, "
        f"LEADSYNC_UNKNOWN_OUTCOME_REST_S={rest_s(args):g}, "
        f"LEADSYNC_LEASE_TTL_S={lease_ttl_s(args):g}, leadsync's and the simulator's limits "
        f"high; simulator {args.latency:g} s per call (+ up to half as much jitter), seed "
        f"{args.seed}. APIs: {', '.join(apis)}; every run its own Redis and simulator, the "
        f"same leadsync settings (but the `, defaults` run). split: reply_chunk_bytes={args.chunk_bytes}, "
        f"reply_chunk_gap_s={args.chunk_gap_s:g} (clean: reply_chunk_bytes=0). 504 after D "
        f"s: fault_gateway_504_rate={args.gateway_rate:g}, gateway_apply_delay_s=D"
        + (
            f"; the `, defaults` run leaves LEADSYNC_REQUEST_TIMEOUT_S, "
            f"LEADSYNC_UNKNOWN_OUTCOME_REST_S and LEADSYNC_LEASE_TTL_S at leadsync's defaults "
            f"(60, 120, 120 s) and may drain for {args.defaults_timeout_s:g} s. "
            if args.defaults_delay is not None
            else ". "
        )
        + "Re-sent record = a write the simulator applied again to a lead that already had it "
        "applied with the same values (per-lead history); a call that re-sent = a call that "
        "applied at least one. Stale = the person's last write ended CREATED/UPDATED but "
        "Marketo holds another. Without a terminal outcome = not CREATED/UPDATED/FAILED."
    )


def render(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    args: argparse.Namespace,
    apis: Sequence[str],
) -> str:
    body = describe(args, apis) + "\n\n"
    if args.part in ("split", "all"):
        rows = [
            [api, *row]
            for api in apis
            for row in rows_split(results[api]["clean"], results[api]["split"])
        ]
        split_head = f"split ({args.chunk_bytes} B every {args.chunk_gap_s * 1000:g} ms)"
        notes = "\n".join(
            f"- {split_note(api, results[api]['clean'], results[api]['split'], args.batch_size)}"
            for api in apis
        )
        body += (
            "(a) split replies\n\n"
            + md_table(["api", "measure", "unsplit", split_head], rows)
            + "\n\nCall sizes, split vs unsplit (simulator call log):\n\n"
            + notes
            + "\n\n"
        )
    if args.part in ("gateway", "all"):
        labels = gateway_labels(args)
        rows = [
            [api, *row]
            for api in apis
            for row in rows_gateway(results[api]["clean"], [results[api][x] for x in labels])
        ]
        body += (
            f"(b) gateway 504 ({args.gateway_rate:.0%} of calls) while the call is applied later\n\n"
            + md_table(["api", "measure", "fault-free", *labels], rows)
            + "\n"
        )
    return body


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run wire")
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--people", type=int, default=5000)
    parser.add_argument("--upserts", type=int, default=20_000)
    waves.add_arguments(parser)
    parser.add_argument(
        "--delays",
        type=float,
        nargs="+",
        default=[1.0, 5.0, 10.0],
        help="gateway_apply_delay_s values (s); keep them <= --request-timeout-s",
    )
    parser.add_argument("--chunk-bytes", type=int, default=1400, help="reply_chunk_bytes")
    parser.add_argument("--chunk-gap-s", type=float, default=0.02, help="reply_chunk_gap_s")
    parser.add_argument("--gateway-rate", type=float, default=0.25)
    parser.add_argument(
        "--defaults-delay",
        type=float,
        default=5.0,
        help="gateway_apply_delay_s of the run at leadsync's default timeout, rest and lease "
        "(-1: no such run)",
    )
    parser.add_argument(
        "--defaults-timeout-s", type=float, default=1500.0, help="drain, the defaults run"
    )
    parser.add_argument("--request-timeout-s", type=float, default=10.0)
    parser.add_argument(
        "--rest-s",
        type=float,
        help="LEADSYNC_UNKNOWN_OUTCOME_REST_S (default: the largest delay + --rest-margin-s)",
    )
    parser.add_argument("--rest-margin-s", type=float, default=2.0)
    parser.add_argument("--lease-ttl-s", type=float, help="default: max(timeout + 4, rest) + 6")
    parser.add_argument("--batch-size", type=int, default=300)
    parser.add_argument("--flush-interval-s", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.05, help="simulator, per call")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="drain, per run")
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--no-write", action="store_true")
    add_api_argument(parser)
    parser.set_defaults(api="both")
    args = parser.parse_args(argv)
    if args.defaults_delay is not None and args.defaults_delay < 0:
        args.defaults_delay = None
    if args.part != "split" and max(args.delays) > args.request_timeout_s:
        parser.error("--delays must stay <= --request-timeout-s (the client's call timeout)")

    apis = api_list(args.api)
    records = waves.make_writes(
        args.people, args.upserts, args.seed, "wire", {"Title": "write {n}"}
    )
    machine: list[str] = []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for api in apis:
        for label, sim_extra in plan(args):
            started = time.monotonic()
            print(f"--- wire, {api}, {label}", flush=True)
            result = run_one(api, label, sim_extra, records, args, machine)
            result["run_s"] = time.monotonic() - started
            results.setdefault(api, {})[label] = result
            print(json.dumps(result), flush=True)
    body = render(results, args, apis)
    if args.json:
        run = {
            "code": code_version(),
            "command": command_line(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "params": {k: v for k, v in vars(args).items() if k not in ("json", "no_write")},
            "results": results,
        }
        args.json.write_text(json.dumps(run, indent=1))
    print(body)
    if not args.no_write:
        write_section("wire", "wire", machine[0], body)
