"""The `leadsync` command line (typer + rich)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from worker.errors import ConfigError

app = typer.Typer(
    name="leadsync",
    help="Sync lead upserts into Marketo in full, signed, rate-limited batches.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.command()
def demo(
    leads: int = typer.Option(10_000, "--leads", "-n", min=1, help="How many upserts to enqueue."),
    concurrency: int = typer.Option(4, min=1, help="Worker processes (calls in flight)."),
    latency_ms: float = typer.Option(0.0, min=0, help="Simulated Marketo latency per call."),
    shards: int = typer.Option(16, min=1, help="Shard streams."),
) -> None:
    """Run the whole pipeline end to end: Redis, the Marketo simulator, a real worker."""
    from worker.demo import render_summary, run_demo

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
) -> None:
    """Run the Marketo simulator (SOAP at /soap/mktows/2_2, admin API at /admin)."""
    from marketo_sim.config import SimConfig
    from marketo_sim.server import run

    run(
        host,
        port,
        SimConfig(user_id=user_id, encryption_key=encryption_key, latency_s=latency_ms / 1000),
    )


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        sys.exit(2)
