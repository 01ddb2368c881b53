"""Plumbing shared by the commands: settings, a Redis client with the configured
timeouts (a command never hangs on an unreachable Redis; made by worker/connections.py,
so every URL form works, Sentinel included), a producer, progress bars and
time formatting. Results go to stdout, progress and problems to stderr."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.connections import redis_client
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.ops.ingest import FileFormat

# The input options `leadsync enqueue` and `leadsync backfill` share.
InputFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A CSV or JSONL file.")
]
InputFormat = Annotated[
    str | None,
    typer.Option("--format", help="csv or jsonl (default: from the file extension)."),
]
ColumnMaps = Annotated[
    list[str] | None,
    typer.Option("--map", help="Rename a column before use: COL=FIELD (repeatable)."),
]


def input_spec(
    file: Path, file_format: str | None, maps: list[str] | None
) -> tuple[dict[str, str], FileFormat]:
    """The column mapping and the file's format, or a usage error naming what is wrong."""
    from worker.ops.ingest import detect_format, parse_mapping

    try:
        return parse_mapping(maps or []), detect_format(file, file_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


if TYPE_CHECKING:
    from redis.asyncio import Redis

    from producers import LeadProducer

T = TypeVar("T")

console = Console()
#: Progress bars and problems go to stderr, so stdout carries only results (request ids).
err_console = Console(stderr=True)


def settings_from_env() -> Settings:
    return Settings.from_env()


def run_with_redis(settings: Settings, work: Callable[[Redis], Awaitable[T]]) -> T:
    """Run ``work`` with an asyncio Redis client that is closed afterwards."""

    async def runner() -> T:
        client = redis_client(settings)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(runner())


@contextmanager
def producer_for(settings: Settings) -> Iterator[LeadProducer]:
    from producers import LeadProducer
    from worker.connections import redis_client_sync

    client = redis_client_sync(settings)  # any URL form, Sentinel included
    try:
        producer = LeadProducer(
            client,
            key_prefix=settings.key_prefix,
            shards=settings.shards,
            owns_client=True,
            config=settings.producer_config(),
        )
    except BaseException:
        client.close()
        raise
    with producer:
        yield producer


def progress_bar(on: Console = err_console) -> Progress:
    """A bar with a count and the time taken (on stderr unless told otherwise)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=on,
        transient=False,
    )


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
