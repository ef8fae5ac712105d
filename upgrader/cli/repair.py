"""`upgrader retry`, `skip`: going on from a held run after the operator repaired the twin."""

from __future__ import annotations

import getpass

import click

from upgrader import app
from upgrader.cli.common import app_context, finish_run

HOST = click.argument("host", metavar="HOST")
BY = click.option("--by", "who", default=None, help="who does it, for the journal (default: the login name)")


@click.command()
@HOST
@BY
@click.pass_context
def retry(ctx: click.Context, host: str, who: str | None) -> None:
    """Run the failed step of HOST's held run again from scratch, then continue the run.

    \b
    A held run: a clone, upgrade, validation or pre-sync step failed and the twin was kept
    running on staging (exit 6). Repair it first, e.g.
      upgrader ssh HOST --twin                 # look around, fix what broke
      upgrader retry HOST
    The step is probed before it runs (its done-marker or the plan's `probe:`): a step you
    finished by hand counts as done. `upgrader resume HOST` does the same as retry."""
    context, console = app_context(ctx)
    finish_run(console, app.retry(context, host, who or getpass.getuser()))


@click.command()
@HOST
@click.option("--reason", required=True, metavar="TEXT", help="why the step may be skipped (journaled)")
@BY
@click.pass_context
def skip(ctx: click.Context, host: str, reason: str, who: str | None) -> None:
    """Mark the failed step of HOST's held run as done by hand, then continue the run.

    For an upgrade step you completed yourself on the twin, a validation check you accept, or a
    pre-sync pass (the final sync copies everything anyway). Journaled with who and why. The
    clone cannot be skipped: `retry` or `abort` it."""
    context, console = app_context(ctx)
    finish_run(console, app.skip(context, host, who or getpass.getuser(), reason))
