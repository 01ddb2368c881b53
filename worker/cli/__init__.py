"""The `leadsync` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.errors import ConfigError, InvalidLead

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from producers.contract import Outcome
    from producers.producer import LeadProducer
    from worker.obs.stats import StatsSnapshot
    from worker.ops.dead_letters import DeadLetter, ReplayReport
    from worker.ops.doctor import Check
    from worker.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="leadsync",
    help="Sync lead upserts into Marketo in full, signed, rate-limited batches.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
#: Progress bars and problems go to stderr, so stdout carries only results (request ids).
err_console = Console(stderr=True)


@app.command()
def demo(
    leads: int = typer.Option(10_000, "--leads", "-n", min=1, help="How many upserts to enqueue."),
    concurrency: int = typer.Option(4, min=1, help="Worker processes (calls in flight)."),
    latency_ms: float = typer.Option(0.0, min=0, help="Simulated Marketo latency per call."),
    shards: int = typer.Option(16, min=1, help="Shard streams."),
) -> None:
    """Run the whole pipeline end to end: Redis, the Marketo simulator, a real worker."""
    from marketo_sim.demo import render_summary, run_demo

    result = run_demo(
        leads=leads,
        concurrency=concurrency,
        latency_s=latency_ms / 1000,
        shards=shards,
        console=console,
    )
    render_summary(result, console)
    if not result.complete:
        console.print("[red]some leads have no final outcome[/]")
        raise typer.Exit(1)


@app.command()
def sim(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8765, help="Port to listen on."),
    user_id: str = typer.Option(
        "leadsync_sim_user", envvar="LEADSYNC_MARKETO_USER_ID", help="Accepted mktowsUserId."
    ),
    encryption_key: str = typer.Option(
        "leadsync-sim-key",
        envvar="LEADSYNC_MARKETO_ENCRYPTION_KEY",
        help="Accepted encryption key.",
        show_default=False,
    ),
    latency_ms: float = typer.Option(0.0, min=0, help="Added latency per call."),
    lenient: bool = typer.Option(
        False,
        help="Ignore unknown or misplaced elements as Marketo does (the seed's Java and Ruby "
        "samples send some), instead of faulting with 20012.",
    ),
    check_timestamp: bool = typer.Option(
        True,
        help="Refuse signatures older than 5 minutes with 20016 (off: replay recorded requests).",
    ),
) -> None:
    """Run the Marketo simulator (SOAP at /soap/mktows/2_2, admin API at /admin)."""
    from marketo_sim.config import SimConfig
    from marketo_sim.server import run

    config = SimConfig(
        user_id=user_id,
        encryption_key=encryption_key,
        latency_s=latency_ms / 1000,
        unknown_elements="ignore" if lenient else "fault",
        timestamp_window_s=SimConfig().timestamp_window_s if check_timestamp else None,
    )
    run(host, port, config)


# --- shared plumbing of the operations commands ---------------------------------------


def _settings() -> Settings:
    from worker.settings import Settings

    return Settings.from_env()


def _run_with_redis(settings: Settings, work: Callable[[Redis], Awaitable[T]]) -> T:
    """Run ``work`` with an asyncio Redis client that is closed afterwards."""
    import redis.asyncio

    async def runner() -> T:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(runner())


@contextmanager
def _producer(settings: Settings) -> Iterator[LeadProducer]:
    from producers.producer import LeadProducer

    with LeadProducer.from_url(
        settings.redis_url, key_prefix=settings.key_prefix, shards=settings.shards
    ) as producer:
        yield producer


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- enqueue and status ------------------------------------------------------------------


@app.command()
def enqueue(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A CSV or JSONL file."),  # noqa: B008
    file_format: str | None = typer.Option(
        None, "--format", help="csv or jsonl (default: from the file extension)."
    ),
    maps: list[str] = typer.Option(  # noqa: B008
        [], "--map", help="Rename a column before use: COL=FIELD (repeatable)."
    ),
    ids_out: Path | None = typer.Option(  # noqa: B008
        None, "--ids-out", help="Write 'line,request_id' rows here instead of to stdout."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for every outcome, then summarize."),
    timeout_s: float = typer.Option(300.0, "--timeout-s", min=0, help="How long --wait waits."),
    errors_shown: int = typer.Option(100, "--errors-shown", min=0, help="Bad rows listed at most."),
) -> None:
    """Enqueue every row of a CSV or JSONL file as a lead upsert.

    Columns email, marketo_id, foreign_sys_person_id, foreign_sys_type and dedup are keys;
    every other column is a Marketo attribute. Bad rows are reported by line and skipped.
    Exits 1 when a row was skipped or (with --wait) a lead did not end CREATED or UPDATED.
    """
    from producers.producer import BULK_CHUNK
    from worker.ops.ingest import Row, count_lines, detect_format, parse_mapping, read_rows

    try:
        mapping = parse_mapping(maps)
        kind = detect_format(file, file_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = _settings()
    total = max(count_lines(file) - (1 if kind == "csv" else 0), 0)
    accepted: list[tuple[int, str]] = []
    bad: list[tuple[int, str]] = []

    def send(producer: LeadProducer, rows: list[Row]) -> None:
        good = [row for row in rows if row.record is not None]
        bad.extend((row.line, row.error or "") for row in rows if row.record is None)
        for row, result in zip(
            good, producer.upsert_many(r.record or {} for r in good), strict=True
        ):
            if isinstance(result, InvalidLead):
                bad.append((row.line, str(result)))
            else:
                accepted.append((row.line, result))

    with _producer(settings) as producer, _progress() as progress:
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
    """Poll in chunks until every outcome is final or ``timeout_s`` passes."""
    task = progress.add_task("waiting for outcomes", total=len(request_ids))
    deadline = time.monotonic() + timeout_s
    latest: dict[str, Outcome | None] = {}
    waiting = list(request_ids)
    while True:
        still = []
        for start in range(0, len(waiting), 1000):
            part = waiting[start : start + 1000]
            for rid, outcome in zip(part, producer.outcomes(part), strict=True):
                latest[rid] = outcome
                if outcome is None or not outcome.status.is_final:
                    still.append(rid)
        waiting = still
        progress.update(task, completed=len(request_ids) - len(waiting))
        if not waiting or time.monotonic() >= deadline:
            return latest
        time.sleep(0.2)


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
    settings = _settings()
    with _producer(settings) as producer:
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
        ("enqueued", _when(outcome.enqueued_at)),
        ("finished", _when(outcome.finished_at)),
        ("took", _age(waited)),
    ):
        table.add_row(name, value)
    console.print(table)


# --- stats -------------------------------------------------------------------------------


@app.command()
def stats(
    all_shards: bool = typer.Option(False, "--all", help="List shards with nothing in them too."),
) -> None:
    """Backlog and oldest age per shard, the shared limits and the outcomes of the last minute."""
    from worker.obs.stats import snapshot

    settings = _settings()
    snap = _run_with_redis(settings, lambda r: snapshot(r, settings))
    console.print(_limits_table(snap, settings))
    console.print(_shards_table(snap, all_shards))


def _limits_table(snap: StatsSnapshot, settings: Settings) -> Table:
    state = snap.limiter
    hold = "none"
    if state.hold_reason:
        since = f" since {_when(state.hold_since)}" if state.hold_since else ""
        hold = f"[red]HELD[/] ({state.hold_reason}){since}"
    cooldown = "none"
    if state.cooldown_remaining_s > 0:
        cooldown = f"{state.cooldown_remaining_s:.1f} s left ({state.cooldown_reason})"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(snap.outcomes_last_minute.items()))
    table = Table(show_header=False, title="pipeline")
    for name, value in (
        ("backlog", f"{snap.backlog_total} entries, oldest {_age(snap.oldest_age_s)}"),
        ("calls in flight", f"{state.slots_in_use} of {settings.max_concurrent_calls}"),
        (
            "calls in window",
            f"{state.calls_in_window} of {settings.rate_limit_calls} "
            f"per {settings.rate_limit_window_s:g} s",
        ),
        ("quota used today", f"{state.quota_used_today} of {state.quota_limit}"),
        ("quota pace", snap.pace.describe()),
        ("hold", hold),
        ("cooldown", cooldown),
        ("outcomes, last minute", outcomes or "none"),
        ("dead letters", str(sum(snap.dead_letters))),
    ):
        table.add_row(name, value)
    return table


def _shards_table(snap: StatsSnapshot, all_shards: bool) -> Table:
    table = Table(title=f"shards ({snap.shards})")
    for column in ("shard", "backlog", "oldest", "leased", "dead letters"):
        table.add_column(column, justify="right")
    for backlog, dead in zip(snap.backlogs, snap.dead_letters, strict=True):
        if all_shards or backlog.entries or dead or backlog.busy:
            table.add_row(
                str(backlog.shard),
                str(backlog.entries),
                _age(backlog.oldest_age_s),
                "yes" if backlog.busy else "",
                str(dead),
            )
    return table


# --- dead letters ------------------------------------------------------------------------

dlq_app = typer.Typer(help="Inspect and replay dead-lettered upserts.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _parked(
    settings: Settings, code: str | None, shard: int | None, limit: int | None
) -> Callable[[Redis], Awaitable[list[DeadLetter]]]:
    from producers.contract import Keys
    from worker.obs.stats import stored_shards
    from worker.ops.dead_letters import list_dead_letters

    async def work(redis: Redis) -> list[DeadLetter]:
        keys = Keys(settings.key_prefix)
        shards = await stored_shards(redis, keys) or settings.shards
        try:
            return await list_dead_letters(redis, keys, shards, code=code, shard=shard, limit=limit)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return work


@dlq_app.command("list")
def dlq_list(
    code: str | None = typer.Option(None, "--code", help="Only this error code."),
    shard: int | None = typer.Option(None, "--shard", min=0, help="Only this shard."),
    limit: int = typer.Option(50, "--limit", min=1, help="Show at most this many."),
    cursor: str | None = typer.Option(
        None, "--after", help="Continue after this cursor (printed under the previous page)."
    ),
) -> None:
    """Parked entries, one page at a time: ids, hashed lead key, code, error and attempts
    (never lead values)."""
    from producers.contract import Keys
    from worker.obs.stats import stored_shards
    from worker.ops.dead_letters import DeadLetterPage, list_page

    settings = _settings()

    async def work(redis: Redis) -> DeadLetterPage:
        keys = Keys(settings.key_prefix)
        shards = await stored_shards(redis, keys) or settings.shards
        try:
            return await list_page(
                redis, keys, shards, code=code, shard=shard, limit=limit, cursor=cursor
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    page = _run_with_redis(settings, work)
    letters = page.letters
    table = Table(title=f"dead letters ({len(letters)} shown)")
    for column in ("dlq id", "request id", "shard", "key hash", "code"):
        table.add_column(column, no_wrap=True)
    table.add_column("error", overflow="fold")
    table.add_column("attempts", no_wrap=True)
    for d in letters:
        table.add_row(
            d.dlq_id, d.request_id, str(d.shard), d.key_hash, d.code, d.error, str(d.attempts)
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: leadsync dlq list --after {page.next_cursor}")


@dlq_app.command("replay")
def dlq_replay(
    code: str | None = typer.Option(None, "--code", help="Only this error code."),
    shard: int | None = typer.Option(None, "--shard", min=0, help="Only this shard."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Replay at most this many."),
    force: bool = typer.Option(
        False, "--force", help="Replay even when a newer upsert of the same lead went through."
    ),
) -> None:
    """Put parked entries back into their shard streams to be retried.

    The original request ids get the outcome when the replayed entries complete.
    """
    from producers.contract import Keys
    from worker.ops.dead_letters import replay

    settings = _settings()
    finder = _parked(settings, code, shard, limit)

    async def work(redis: Redis) -> ReplayReport:
        letters = await finder(redis)
        return await replay(
            redis,
            Keys(settings.key_prefix),
            letters,
            result_ttl_s=settings.result_ttl_s,
            force=force,
        )

    report = _run_with_redis(settings, work)
    console.print(f"replayed {report.replayed}")
    if report.superseded:
        console.print(
            f"[yellow]{len(report.superseded)} left parked[/]: a newer upsert of the same lead "
            "was enqueued since, and replaying would overwrite it (--force to replay anyway)"
        )
    if report.gone:
        console.print(f"{report.gone} were replayed by someone else meanwhile")
    if report.answered:
        console.print(f"{report.answered} already have a final outcome and stay as they are")


# --- doctor ------------------------------------------------------------------------------


@app.command()
def doctor(
    liveness: bool = typer.Option(
        False, "--liveness", help="Only check this pod's worker heartbeat (Kubernetes probe)."
    ),
    max_age_s: float = typer.Option(
        60.0, "--max-age-s", min=1, help="With --liveness: oldest heartbeat still alive."
    ),
) -> None:
    """Check settings, Redis, the ledger, the limits and the Marketo endpoint.

    Exits 1 when a check FAILs.
    """
    from worker.ops.doctor import check_settings, failed, run_checks
    from worker.ops.doctor import liveness as check_liveness

    settings, first = check_settings()
    if liveness:
        check = first if settings is None else asyncio.run(check_liveness(settings, max_age_s))
        typer.echo(f"{check.level} {check.detail}")
        if check.level != "OK":
            raise typer.Exit(1)
        return
    checks = [first] if settings is None else [first, *asyncio.run(run_checks(settings))]
    console.print(_checks_table(checks))
    if failed(checks):
        raise typer.Exit(1)


def _checks_table(checks: Sequence[Check]) -> Table:
    colour = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
    table = Table(title="leadsync doctor")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, f"[{colour[check.level]}]{check.level}[/]", check.detail)
    return table


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
