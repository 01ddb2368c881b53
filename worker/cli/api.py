"""``leadsync api`` (the HTTP ingestion API) and ``leadsync api-keys`` (its keys)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.table import Table

from worker.cli.common import console, err_console, run_with_redis, settings_from_env, when

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.api.auth import KeyStore

T = TypeVar("T")

app = typer.Typer()
keys_app = typer.Typer(help="Create, list and revoke the HTTP API's keys.", no_args_is_help=True)


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port to listen on."),
) -> None:
    """Serve the HTTP ingestion API (/v1/leads, /v1/outcomes, /healthz, /readyz, /metrics)."""
    from worker.api.app import start
    from worker.obs.logs import configure_logging

    settings = settings_from_env()
    # The access log: client, request line (route and query), status, size, time.
    configure_logging(settings, also=("aiohttp.access", "aiohttp.server"))

    async def serve() -> None:
        runner = await start(settings, host, port)
        err_console.print(f"leadsync api listening on http://{host}:{port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())


def _with_store(work: Callable[[KeyStore], Awaitable[T]]) -> T:
    from worker.api.auth import KeyStore

    settings = settings_from_env()

    async def run(redis: Redis) -> T:
        return await work(KeyStore.for_settings(redis, settings))

    return run_with_redis(settings, run)


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="A name for the key (one key per name)."),
    scopes: list[str] = typer.Option(  # noqa: B008
        ...,
        "--scope",
        help="write (POST), read (GET its own request ids) or read:all (GET any key's "
        "request ids: operators); repeat for several.",
    ),
    rate_per_s: int | None = typer.Option(
        None,
        "--rate-per-s",
        min=1,
        help="Most requests per second for this key (default: LEADSYNC_API_DEFAULT_RATE_PER_S).",
    ),
) -> None:
    """Make a key and print it ALONE on the last line of stdout (it is shown only once)."""
    try:
        key, made = _with_store(lambda store: store.create(name, scopes, rate_per_s))
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    rate = (
        f", {made.rate_per_s} requests/s"
        if made.rate_per_s
        else f", the default rate: {settings_from_env().api_default_rate_per_s:g} requests/s"
    )
    err_console.print(f"created API key {made.name!r} ({', '.join(made.scopes)}{rate}); keep it:")
    typer.echo(key)


@keys_app.command("list")
def list_keys() -> None:
    """Names, scopes, rates and creation times (never the keys)."""
    found = _with_store(lambda store: store.list())
    table = Table(title="API keys")
    for column in ("name", "scopes", "rate/s", "created"):
        table.add_column(column)
    for item in found:
        rate = "default" if item.rate_per_s is None else f"{item.rate_per_s:g}"
        table.add_row(item.name, ",".join(item.scopes), rate, when(item.created))
    console.print(table)


@keys_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Remove a key: requests with it get 401 at once."""
    if not _with_store(lambda store: store.revoke(name)):
        err_console.print(f"[red]no API key named {name!r}[/]")
        raise typer.Exit(1)
    console.print(f"revoked API key {name!r}")
