"""``leadsync dlq list`` and ``leadsync dlq replay``: parked entries, paged, and their
replay (which never overwrites a newer upsert unless forced)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from worker.cli.common import console, run_with_redis, settings_from_env

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.ops.dead_letters import DeadLetter, ReplayReport
    from worker.settings import Settings

app = typer.Typer(help="Inspect and replay dead-lettered upserts.", no_args_is_help=True)


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


@app.command("list")
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

    settings = settings_from_env()

    async def work(redis: Redis) -> DeadLetterPage:
        keys = Keys(settings.key_prefix)
        shards = await stored_shards(redis, keys) or settings.shards
        try:
            return await list_page(
                redis, keys, shards, code=code, shard=shard, limit=limit, cursor=cursor
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    page = run_with_redis(settings, work)
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


@app.command("replay")
def dlq_replay(
    code: str | None = typer.Option(None, "--code", help="Only this error code."),
    shard: int | None = typer.Option(None, "--shard", min=0, help="Only this shard."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Replay at most this many."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Send every field as parked, even those a newer applied write of the lead set "
        "(those may be reverted: the command names them).",
    ),
) -> None:
    """Put parked entries back into their shard streams to be retried, lead by lead.

    A lead's parked writes go back together, in write order; fields a newer write set are
    never reverted (unless --force). The original request ids get the outcome when the
    replayed entries complete; a write every field of which was set since ends FAILED
    (SUPERSEDED) at once.
    """
    from producers.contract import Keys
    from worker.ops.dead_letters import replay

    settings = settings_from_env()
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

    report = run_with_redis(settings, work)
    console.print(f"replayed {report.replayed}")
    if report.superseded:
        console.print(
            f"[yellow]{len(report.superseded)} superseded[/]: every field they set was set by "
            "a newer write Marketo applied; they end FAILED (SUPERSEDED), nothing is sent "
            "(--force to send them anyway)"
        )
    for request, fields in sorted(report.may_revert.items()):
        console.print(
            f"[yellow]{request}[/] may revert {', '.join(fields)}: a newer write set them"
        )
    if report.gone:
        console.print(f"{report.gone} were replayed by someone else meanwhile")
    if report.answered:
        console.print(f"{report.answered} already have a final outcome and stay as they are")
