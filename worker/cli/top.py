"""``leadsync top``: a live view of the pipeline (backlog and oldest entry per shard, calls
in the window and today against the share, the pace, holds and rests, outcomes per
minute), read again every ``--interval-s`` until Ctrl-C; ``--once`` prints one frame.

A failed read never ends the view: it says "Redis unavailable" above the last figures and
tries again at the next refresh. The gathering and the rendering live in
worker/obs/top_view.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

import typer
from redis.exceptions import RedisError
from rich.live import Live

from worker.cli.common import console, settings_from_env
from worker.connections import redis_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.obs.top_view import TopScreen
    from worker.settings import Settings

app = typer.Typer()

#: The exit status of ``--once`` when Redis cannot be read (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75


@app.command()
def top(
    interval_s: float = typer.Option(
        1.0, "--interval-s", min=0.05, help="Seconds between two refreshes."
    ),
    once: bool = typer.Option(
        False, "--once", help="Print one frame and exit (75 when Redis cannot be read)."
    ),
) -> None:
    """A live view of backlogs, calls against the share, the pace, holds, rests and outcomes."""
    settings = settings_from_env()
    try:
        if once:
            screen = asyncio.run(_once(settings))
            from worker.obs.top_view import render

            console.print(render(screen))  # every shard with something in it
            if screen.problem is not None:
                raise typer.Exit(EX_TEMPFAIL)
            return
        asyncio.run(_live(settings, interval_s))
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler was in place
        pass


async def refresh(redis: Redis, settings: Settings, screen: TopScreen) -> TopScreen:
    """The next screen: a fresh frame, or the last one under the reason the read failed."""
    from worker.obs.top_view import gather

    budget_s = settings.redis_connect_timeout_s + 2 * settings.redis_socket_timeout_s
    try:
        frame = await asyncio.wait_for(gather(redis, settings), budget_s)
    except (RedisError, OSError, TimeoutError) as exc:
        # The class only: a connection error's message may carry the URL and password.
        return screen.with_problem(f"Redis unavailable ({type(exc).__name__})", time.time())
    return screen.with_frame(frame, time.time())


async def _once(settings: Settings) -> TopScreen:
    from worker.obs.top_view import TopScreen

    redis = redis_client(settings)
    try:
        blank = TopScreen(now_s=time.time(), interval_s=None, key_prefix=settings.key_prefix)
        return await refresh(redis, settings, blank)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.aclose()


async def _live(settings: Settings, interval_s: float) -> None:
    from worker.obs.top_view import TopScreen, render

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis = redis_client(settings)
    screen = TopScreen(now_s=time.time(), interval_s=interval_s, key_prefix=settings.key_prefix)
    try:
        with Live(
            render(screen), console=console, auto_refresh=False, screen=False, transient=False
        ) as live:
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                reading = asyncio.ensure_future(refresh(redis, settings, screen))
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():  # Ctrl-C during a slow read: do not wait for it
                    reading.cancel()
                    break
                screen = reading.result()
                rows = max(console.height - 20, 3)
                live.update(render(screen, max_shard_rows=rows), refresh=True)
                await asyncio.wait({stopping}, timeout=interval_s)
            stopping.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(RedisError, OSError):
            await redis.aclose()
