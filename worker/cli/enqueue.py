"""``leadsync enqueue`` (a CSV or JSONL file, with progress and an optional wait for
every outcome) and ``leadsync status`` (one request's outcome)."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import Progress
from rich.table import Table

from worker.cli.common import (
    ColumnMaps,
    InputFile,
    InputFormat,
    age,
    console,
    err_console,
    input_spec,
    producer_for,
    progress_bar,
    settings_from_env,
    when,
)
from worker.errors import InvalidLead

if TYPE_CHECKING:
    from producers import LeadProducer
    from producers.contract import Outcome

app = typer.Typer()


@app.command()
def enqueue(
    file: InputFile,
    file_format: InputFormat = None,
    maps: ColumnMaps = None,
    ids_out: Path | None = typer.Option(  # noqa: B008
        None, "--ids-out", help="Write 'line,request_id' rows here instead of to stdout."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for every outcome, then summarize."),
    timeout_s: float = typer.Option(300.0, "--timeout-s", min=0, help="How long --wait waits."),
    errors_shown: int = typer.Option(100, "--errors-shown", min=0, help="Bad rows listed at most."),
    bulk: bool = typer.Option(
        False,
        "--bulk",
        help="The bulk lane: sent only while no live batch waits, under its own daily "
        "call budget (LEADSYNC_BULK_DAILY_CALLS).",
    ),
) -> None:
    """Enqueue every row of a CSV or JSONL file as a lead upsert.

    Columns email, marketo_id, foreign_sys_person_id, foreign_sys_type and dedup are keys;
    every other column is a Marketo attribute. Bad rows are reported by line and skipped.
    Exits 1 when a row was skipped or (with --wait) a lead did not end CREATED or UPDATED.
    """
    from producers.contract import BULK_CHUNK
    from worker.ops.ingest import Row, count_lines, read_rows

    mapping, kind = input_spec(file, file_format, maps)
    settings = settings_from_env()
    total = max(count_lines(file) - (1 if kind == "csv" else 0), 0)
    accepted: list[tuple[int, str]] = []
    bad: list[tuple[int, str]] = []

    def send(producer: LeadProducer, rows: list[Row]) -> None:
        good = [row for row in rows if row.record is not None]
        bad.extend((row.line, row.error or "") for row in rows if row.record is None)
        for row, result in zip(
            good,
            producer.upsert_many((r.record or {} for r in good), lane="bulk" if bulk else "live"),
            strict=True,
        ):
            if isinstance(result, InvalidLead):
                bad.append((row.line, str(result)))
            else:
                accepted.append((row.line, result))

    with producer_for(settings) as producer, progress_bar() as progress:
        task = progress.add_task(f"enqueue {file.name}", total=total)
        with file.open(encoding="utf-8-sig", newline="") as handle:
            rows: list[Row] = []
            for row in read_rows(handle, kind, mapping):
                rows.append(row)
                if len(rows) >= BULK_CHUNK:
                    send(producer, rows)
                    progress.update(task, completed=rows[-1].line - (kind == "csv"))
                    rows = []
            send(producer, rows)
        progress.update(task, completed=total)
        _report_ids(accepted, ids_out)
        _report_bad_rows(bad, errors_shown)
        err_console.print(f"enqueued {len(accepted)}, skipped {len(bad)}")
        unfinished = 0
        if wait and accepted:
            outcomes = _wait_outcomes(producer, [rid for _, rid in accepted], timeout_s, progress)
            unfinished = _render_outcomes(accepted, outcomes)
    if bad or unfinished:
        raise typer.Exit(1)


def _report_ids(accepted: Sequence[tuple[int, str]], ids_out: Path | None) -> None:
    if ids_out is None:
        for line, rid in accepted:
            typer.echo(f"{line}\t{rid}")
        return
    with ids_out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "request_id"])
        writer.writerows(accepted)
    err_console.print(f"request ids written to {ids_out}")


def _report_bad_rows(bad: Sequence[tuple[int, str]], shown: int) -> None:
    for line, error in sorted(bad)[:shown]:
        err_console.print(f"[yellow]line {line}[/]: {error}", markup=True, highlight=False)
    if len(bad) > shown:
        err_console.print(f"... and {len(bad) - shown} more bad rows")


def _wait_outcomes(
    producer: LeadProducer, request_ids: Sequence[str], timeout_s: float, progress: Progress
) -> dict[str, Outcome | None]:
    """Wait for every outcome (or ``timeout_s``) with a progress bar."""
    task = progress.add_task("waiting for outcomes", total=len(request_ids))
    return producer.wait_outcomes(
        request_ids, timeout_s, on_progress=lambda done: progress.update(task, completed=done)
    )


def _render_outcomes(
    accepted: Sequence[tuple[int, str]], outcomes: dict[str, Outcome | None]
) -> int:
    """Print a status table and the failures; return how many did not succeed."""
    counts = Counter(o.status.value if o else "UNKNOWN" for o in outcomes.values())
    table = Table(title="outcomes")
    table.add_column("status")
    table.add_column("leads", justify="right")
    for status, n in sorted(counts.items()):
        table.add_row(status, str(n))
    console.print(table)
    failures = [
        (line, rid, outcomes.get(rid))
        for line, rid in accepted
        if (o := outcomes.get(rid)) is None or o.status.value not in ("CREATED", "UPDATED")
    ]
    if failures:
        detail = Table(title="not created or updated (first 20)")
        for column in ("line", "request id", "status", "code", "error"):
            detail.add_column(column)
        for line, rid, outcome in failures[:20]:
            detail.add_row(
                str(line),
                rid,
                outcome.status.value if outcome else "UNKNOWN",
                (outcome.error_code if outcome else None) or "-",
                (outcome.error if outcome else None) or "-",
            )
        console.print(detail)
    return len(failures)


@app.command()
def status(request_id: str = typer.Argument(..., help="A request id from enqueue.")) -> None:
    """Show the outcome of one request.

    Exits 1 when the request is unknown or its outcome expired.
    """
    settings = settings_from_env()
    with producer_for(settings) as producer:
        outcome = producer.outcome(request_id)
    if outcome is None:
        console.print(
            f"{request_id}: unknown (not a request id of this deployment, or its outcome expired)"
        )
        raise typer.Exit(1)
    table = Table(show_header=False, title=f"request {request_id}")
    waited = (
        outcome.finished_at - outcome.enqueued_at
        if outcome.finished_at is not None and outcome.enqueued_at is not None
        else None
    )
    for name, value in (
        ("status", outcome.status.value),
        ("Marketo lead id", str(outcome.lead_id) if outcome.lead_id is not None else "-"),
        ("error code", outcome.error_code or "-"),
        ("error", outcome.error or "-"),
        ("attempts", str(outcome.attempts)),
        ("enqueued", when(outcome.enqueued_at)),
        ("finished", when(outcome.finished_at)),
        ("took", age(waited)),
    ):
        table.add_row(name, value)
    console.print(table)
