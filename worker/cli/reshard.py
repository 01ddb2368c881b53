"""``leadsync reshard N``: change the shard count while the pipeline runs, keeping every
ordering rule (``worker.ops.reshard``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from worker.cli.common import console, err_console, run_with_redis, settings_from_env

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.ops.reshard import LayoutLook, ReshardReport

app = typer.Typer()


@app.command()
def reshard(
    shards: int = typer.Argument(..., min=1, help="The new shard count."),
    timeout_s: float = typer.Option(
        120.0,
        "--timeout-s",
        min=1.0,
        help="Give up (nothing changed) when the old layout is not empty and quiet by then.",
    ),
    abort: bool = typer.Option(
        False, "--abort", help="Give up a reshard to SHARDS under way (the old count stays)."
    ),
) -> None:
    """Change the shard count. Intake is refused (retryable: HTTP 503 + Retry-After) while
    the workers drain the old layout's streams, then the new count is stored atomically and
    every producer, API and worker follows it; dead letters move to their leads' new
    shards under the request ids the apps hold. The bulk lane must be empty. Afterwards
    set LEADSYNC_SHARDS (and one KEDA trigger per shard) to it."""
    from producers.contract import Keys
    from worker.errors import ReshardError
    from worker.ops import reshard as ops

    settings = settings_from_env()
    keys = Keys(settings.key_prefix)
    if abort:
        gone = run_with_redis(settings, lambda redis: ops.abort(redis, keys, shards))
        console.print("reshard given up" if gone else f"no reshard to {shards} is under way")
        return
    seen: list[str] = []

    def on_look(phase: str, look: LayoutLook) -> None:
        if not seen or seen[-1] != phase:
            seen.append(phase)
            err_console.print(f"{phase}: {look.describe()}")

    async def work(redis: Redis) -> ReshardReport:
        return await ops.reshard(
            redis,
            keys,
            shards,
            timeout_s=timeout_s,
            dead_letter_ttl_s=settings.dead_letter_ttl_s,
            on_look=on_look,
        )

    try:
        report = run_with_redis(settings, work)
    except ReshardError as exc:
        console.print(f"[red]not resharded:[/] {exc}")
        raise typer.Exit(1) from None
    if not report.changed:
        console.print(f"the shard count is already {shards}")
        return
    console.print(
        f"shard count {report.old} -> {report.new}; intake was refused for "
        f"{report.frozen_s:.1f} s; {report.moved_letters} dead letters moved to their leads' "
        f"new shards. Set LEADSYNC_SHARDS={report.new} (and the KEDA "
        "triggers) so new processes start with it; running ones already follow it."
    )
