"""The simulator's commands, ``leadsync demo`` and ``leadsync sim``. The worker does
not import this package: ``worker.cli`` finds :func:`register` through the
``leadsync.cli`` entry point, so the commands exist only where the simulator is installed."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``sim`` to the ``leadsync`` command."""
    app.command()(demo)
    app.command()(sim)


def demo(
    leads: int = typer.Option(10_000, "--leads", "-n", min=1, help="How many upserts to enqueue."),
    concurrency: int = typer.Option(4, min=1, help="Worker processes (calls in flight)."),
    latency_ms: float = typer.Option(0.0, min=0, help="Simulated Marketo latency per call."),
    shards: int = typer.Option(16, min=1, help="Shard streams."),
    api: str = typer.Option(
        "soap",
        "--api",
        help="Marketo API the worker calls: soap or rest (the simulator speaks both).",
    ),
    wire: bool = typer.Option(
        True,
        "--wire/--loopback",
        help="Write the simulator's replies in 1,400-byte pieces 2 ms apart, as a WAN "
        "delivers them (--loopback: each reply in one piece).",
    ),
    gateway_504_rate: float = typer.Option(
        0.0,
        min=0.0,
        max=1.0,
        help="Share of calls a gateway answers 504 at once while Marketo applies them "
        "2 s later; the worker rests those shards instead of resending.",
    ),
) -> None:
    """Run the whole pipeline end to end: Redis, the Marketo simulator, a real worker."""
    from marketo_sim.demo import render_summary, run_demo

    if api not in ("soap", "rest"):
        raise typer.BadParameter("--api is soap or rest")

    result = run_demo(
        leads=leads,
        concurrency=concurrency,
        latency_s=latency_ms / 1000,
        shards=shards,
        console=console,
        api=api,
        wire=wire,
        gateway_504_rate=gateway_504_rate,
    )
    render_summary(result, console)
    if not result.complete:
        console.print("[red]some leads have no final outcome[/]")
        raise typer.Exit(1)


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
    client_id: str = typer.Option(
        "leadsync-sim-client", envvar="LEADSYNC_MARKETO_CLIENT_ID", help="Accepted REST client_id."
    ),
    client_secret: str = typer.Option(
        "leadsync-sim-secret",
        envvar="LEADSYNC_MARKETO_CLIENT_SECRET",
        help="Accepted REST client_secret.",
        show_default=False,
    ),
    token_lifetime_s: float = typer.Option(3600.0, min=1, help="REST access token lifetime."),
    reply_chunk_bytes: int = typer.Option(
        0, min=0, help="Write every reply body in pieces of at most this many bytes (0: whole)."
    ),
    reply_chunk_gap_s: float = typer.Option(
        0.0, min=0, help="Seconds between two pieces of a reply (with --reply-chunk-bytes)."
    ),
    fault_gateway_504_rate: float = typer.Option(
        0.0,
        min=0,
        max=1,
        help="Share of calls a gateway answers 504 at once while Marketo still applies them.",
    ),
    gateway_apply_delay_s: float = typer.Option(
        5.0, min=0, help="Seconds after its 504 that a gateway-504 call is applied."
    ),
) -> None:
    """Run the Marketo simulator on one port: SOAP at /soap/mktows/2_2; REST with the base URL
    http://HOST:PORT (/rest/v1/leads.json, /rest/v1/leads/describe2.json, identity at
    /identity/oauth/token); admin API at /admin."""
    from marketo_sim.config import SimConfig
    from marketo_sim.server import run

    config = SimConfig(
        user_id=user_id,
        encryption_key=encryption_key,
        latency_s=latency_ms / 1000,
        unknown_elements="ignore" if lenient else "fault",
        timestamp_window_s=SimConfig().timestamp_window_s if check_timestamp else None,
        client_id=client_id,
        client_secret=client_secret,
        token_lifetime_s=token_lifetime_s,
        reply_chunk_bytes=reply_chunk_bytes,
        reply_chunk_gap_s=reply_chunk_gap_s,
        fault_gateway_504_rate=fault_gateway_504_rate,
        gateway_apply_delay_s=gateway_apply_delay_s,
    )
    base = f"http://{host}:{port}"
    console.print(
        f"SOAP endpoint  {base}/soap/mktows/2_2\n"
        f"REST base URL  {base}  (LEADSYNC_MARKETO_REST_URL; identity {base}/identity)\n"
        f"admin          {base}/admin/summary"
    )
    run(host, port, config)
