"""The ``leadsync`` command: operations (enqueue, status, stats, dlq, doctor, reshard) and
the HTTP API (api, api-keys), one module per command. Other packages add commands through
the ``leadsync.cli`` entry point group (the simulator adds ``demo`` and ``sim``)."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from producers import Retryable
from worker.cli import api, backfill, dlq, doctor, enqueue, reshard, stats, top
from worker.cli.common import console
from worker.errors import ConfigError

#: The exit status of a temporary failure (sysexits.h): retrying later may work.
EX_TEMPFAIL = 75

app = typer.Typer(
    name="leadsync",
    help="Sync lead upserts into Marketo in full, signed, rate-limited batches.",
    no_args_is_help=True,
    add_completion=False,
)
for module in (enqueue, backfill, stats, top, doctor, reshard, api):
    for command in module.app.registered_commands:
        app.registered_commands.append(command)
app.add_typer(dlq.app, name="dlq")
app.add_typer(api.keys_app, name="api-keys")
for plugin in entry_points(group="leadsync.cli"):
    plugin.load()(app)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        sys.exit(2)
    except Retryable as exc:  # Redis cannot take or keep the work now, but will
        console.print(f"[yellow]not now:[/] {exc} (retry in {exc.retry_after_s:g} s)")
        sys.exit(EX_TEMPFAIL)
