"""``leadsync backfill``: a large CSV or JSONL file sent in chunks, throttled by the
backlog, with its request ids journaled as it goes and resumable after a crash."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from producers.contract import Lane, stream_index
from worker.cli.common import (
    ColumnMaps,
    InputFile,
    InputFormat,
    console,
    err_console,
    input_spec,
    producer_for,
    progress_bar,
    settings_from_env,
)

if TYPE_CHECKING:
    import redis

    from producers import LeadProducer
    from worker.ops.backfill import Counts, DeliveryTracker

app = typer.Typer()

#: Exit status when Redis refused or failed for longer than --retry-for-s (sysexits.h
#: EX_TEMPFAIL, as ``leadsync`` uses for a Retryable): run the same command again.
EX_TEMPFAIL = 75


@app.command()
def backfill(
    file: InputFile,
    file_format: InputFormat = None,
    maps: ColumnMaps = None,
    ids: Path | None = typer.Option(  # noqa: B008
        None,
        "--ids",
        dir_okay=False,
        help="The journal: one 'LINE<TAB>REQUEST_ID' or 'LINE<TAB>ERROR field: message' per "
        "row (default FILE.ids). A restart continues after its last row.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Continue an ids file written for another input (or a changed one)."
    ),
    max_backlog: int = typer.Option(
        20_000,
        "--max-backlog",
        min=0,
        help="Wait before each chunk while the shard streams hold more entries (0: no bound).",
    ),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="Exit once every row is enqueued, without waiting for delivery."
    ),
    timeout_s: float = typer.Option(
        600.0, "--timeout-s", min=0, help="How long to wait for delivery after the last row."
    ),
    retry_for_s: float = typer.Option(
        300.0,
        "--retry-for-s",
        min=0,
        help="Give up (exit 75, resume later) when Redis refuses or fails this long.",
    ),
    bulk: bool = typer.Option(
        True,
        "--bulk/--live",
        help="The lane: bulk (default: sent only while no live batch waits, under "
        "LEADSYNC_BULK_DAILY_CALLS) or live.",
    ),
) -> None:
    """Enqueue every row of a large CSV or JSONL file, resumably.

    Rows go in chunks of 1000 (one round trip each), keyed and mapped as for
    `leadsync enqueue`, into the bulk lane unless --live: the apps' live upserts go
    first, and the backfill spends its own daily call budget. Each chunk's request ids are appended to the ids file (fsynced)
    once Redis took it; after a crash or Ctrl-C, the same command continues after the
    last row in the ids file, and a chunk Redis took before its ids were written is not
    sent twice (its step is answered with the ids it got).

    Exits 1 when a row was invalid or (unless --no-wait) a lead did not end CREATED or
    UPDATED in time; 75 when Redis kept refusing (run it again to resume).
    """
    from producers.contract import BULK_CHUNK
    from worker.connections import redis_client_sync
    from worker.ops.backfill import (
        Backfill,
        GaveUp,
        Journal,
        JournalError,
        input_fingerprint,
        ticket_name,
    )
    from worker.ops.ingest import count_lines, read_rows

    mapping, kind = input_spec(file, file_format, maps)
    ids = ids or file.with_name(file.name + ".ids")
    settings = settings_from_env()
    started = time.monotonic()
    total = max(count_lines(file) - (1 if kind == "csv" else 0), 0)
    fingerprint = input_fingerprint(file)
    try:
        journal = Journal.open(ids, fingerprint, force=force)
    except JournalError as exc:
        err_console.print(f"[red]cannot use the ids file:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if journal.state.last_line:
        err_console.print(
            f"resuming after line {journal.state.last_line} "
            f"({journal.state.ids} ids, {journal.state.errors} errors in {ids})",
            highlight=False,
        )
    with (
        journal,
        producer_for(settings) as producer,
        closing(redis_client_sync(settings)) as client,
        progress_bar() as progress,
    ):
        sent = progress.add_task(f"enqueue {file.name}", total=total)
        delivered = progress.add_task("delivered", total=0, visible=not no_wait)

        def on_change(counts: Counts, tracker: DeliveryTracker, backlog: int | None) -> None:
            label = f"waiting: backlog {backlog}" if backlog is not None else f"enqueue {file.name}"
            done = counts.skipped + counts.read
            progress.update(sent, description=label, completed=done, total=max(total, done))
            progress.update(delivered, completed=tracker.delivered, total=tracker.tracked)

        lane: Lane = "bulk" if bulk else "live"
        runner = Backfill(
            journal=journal,
            upsert_many=lambda records, ticket: producer.upsert_many(
                records, lane=lane, ticket=ticket
            ),
            backlog=lambda: _backlog(client, producer, lane),
            outcomes=producer.outcomes,
            on_change=on_change,
            max_backlog=max_backlog,
            retry_for_s=retry_for_s,
            track=not no_wait,
            # A resume with another mapping or lane sends other records: another ticket.
            ticket=ticket_name(ids, f"{fingerprint} {sorted(mapping.items())} {kind} {lane}"),
        )
        gave_up: GaveUp | None = None
        try:
            with file.open(encoding="utf-8-sig", newline="") as handle:
                runner.run(read_rows(handle, kind, mapping), BULK_CHUNK)
            progress.update(sent, completed=runner.counts.skipped + runner.counts.read)
            complete = no_wait or runner.wait_delivered(timeout_s)
        except GaveUp as exc:
            gave_up, complete = exc, False
        except KeyboardInterrupt:
            err_console.print(f"interrupted: run the same command again to resume ({ids})")
            raise typer.Exit(130) from None
    counts, tracker = runner.counts, runner.tracker
    outcome = ""
    if not no_wait:
        outcome = f", delivered {tracker.delivered} of {tracker.tracked}" + "".join(
            f" {status} {n}" for status, n in sorted(tracker.statuses.items())
        )
    console.print(
        f"rows read {counts.read}, enqueued {counts.enqueued}, invalid {counts.invalid}, "
        f"skipped {counts.skipped} (resumed){outcome}, {time.monotonic() - started:.1f} s; "
        f"ids in {ids}",
        highlight=False,
    )
    for line, rid, failed in tracker.failures:
        err_console.print(
            f"[yellow]line {line}[/] {rid}: {failed.status.value} "
            f"{failed.error_code or ''} {failed.error or ''}",
            highlight=False,
        )
    if gave_up is not None:
        err_console.print(
            f"[red]{gave_up}[/]: run the same command again to resume", highlight=False
        )
        raise typer.Exit(EX_TEMPFAIL)
    if counts.invalid:
        err_console.print(f"invalid rows are the ERROR lines of {ids}", highlight=False)
    if not complete:
        err_console.print(
            f"{len(tracker.pending)} leads not delivered within --timeout-s {timeout_s:g}: "
            f"their request ids are in {ids} (leadsync status REQUEST_ID)",
            highlight=False,
        )
    if counts.invalid or not complete or tracker.failures:
        raise typer.Exit(1)


def _backlog(client: redis.Redis, producer: LeadProducer, lane: Lane) -> int:
    """Entries in every shard stream of ``lane`` (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for shard in range(producer.shards):
        pipe.xlen(producer.keys.stream(stream_index(shard, producer.shards, lane)))
    return sum(int(n) for n in pipe.execute())
