"""``leadsync doctor``: every health check in one table, or ``--liveness`` for the
Kubernetes probe."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from worker.cli.common import console

if TYPE_CHECKING:
    from worker.ops.doctor import Check

app = typer.Typer()


@app.command()
def doctor(
    liveness: bool = typer.Option(
        False,
        "--liveness",
        help=(
            "Only check this pod's worker heartbeat file (Kubernetes liveness probe; "
            "no Redis: an outage or failover never fails it)."
        ),
    ),
    readiness: bool = typer.Option(
        False, "--readiness", help="Only check that Redis answers (Kubernetes readiness probe)."
    ),
    max_age_s: float = typer.Option(
        60.0, "--max-age-s", min=1, help="With --liveness: oldest heartbeat still alive."
    ),
    role: str | None = typer.Option(
        None,
        "--role",
        help=(
            "api, worker or keda: check what this component's Redis user may do (ACL "
            "DRYRUN), and for api and keda nothing else; default: inferred from the user."
        ),
    ),
    acl_user: str | None = typer.Option(
        None,
        "--acl-user",
        help="Check this Redis user's permissions instead of the current one's (admin URL).",
    ),
) -> None:
    """Check settings, Redis (Sentinel, not a Cluster), the ledger, the limits and the
    Marketo endpoint.

    Exits 1 when a check FAILs.
    """
    from worker.ops.doctor import check_settings, failed, run_checks
    from worker.ops.doctor import liveness as check_liveness
    from worker.ops.doctor import readiness as check_readiness
    from worker.ops.permissions import ROLES

    if role is not None and role not in ROLES:
        typer.echo(f"--role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)

    settings, first = check_settings()
    if liveness or readiness:
        if settings is None:
            check = first
        elif liveness:
            check = check_liveness(settings, max_age_s)
        else:
            check = asyncio.run(check_readiness(settings))
        typer.echo(f"{check.level} {check.detail}")
        if check.level != "OK":
            raise typer.Exit(1)
        return
    checks = (
        [first]
        if settings is None
        else [
            first,
            *asyncio.run(run_checks(settings, role=role, acl_user=acl_user)),
        ]
    )
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
