"""`upgrader retry`, `skip`, `revert`, `checkpoints`: going on from a held run after the operator
repaired the twin (or going back to a checkpoint of it)."""

from __future__ import annotations

import getpass

import click

from rich.table import Table

from upgrader import app, repair
from upgrader.cli.common import app_context, finish_run
from upgrader.ui import safe

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
    finish_run(console, app.retry(context, host, who or getpass.getuser()), context)


@click.command()
@HOST
@click.option("--reason", required=True, metavar="TEXT", help="why the step may be skipped (journaled)")
@BY
@click.pass_context
def skip(ctx: click.Context, host: str, reason: str, who: str | None) -> None:
    """Mark the failed step of HOST's held run as done by hand, then continue the run.

    For an upgrade step you completed yourself on the twin, or a validation you accept.
    Journaled with who and why. The clone and the pre-sync cannot be skipped (later steps need
    what they make): `retry` or `abort` them."""
    context, console = app_context(ctx)
    finish_run(console, app.skip(context, host, who or getpass.getuser(), reason), context)


@click.command()
@HOST
@click.option("--to", "to", required=True, metavar="upgrade[N]",
              help="the step whose checkpoint to go back to (`upgrader checkpoints HOST` lists them)")
@click.option("--yes", is_flag=True, help="do not ask: discard what the twin got since that checkpoint")
@BY
@click.pass_context
def revert(ctx: click.Context, host: str, to: str, yes: bool, who: str | None) -> None:
    """Put the twin of HOST's held run back to the checkpoint taken before upgrade step N, then
    run step N and every step after it again.

    \b
    A checkpoint is taken before the first upgrade step and before every step with
    `checkpoint: true`. The twin is stopped, its disks go back exactly to that moment (a file
    written by step N or later is gone), it is started again and the run goes on from step N.
    Prod is not touched. Quote the step for the shell: --to 'upgrade[3]'."""
    context, console = app_context(ctx)
    repair.check_revert(context, host, to)  # refused before asking, not after
    if not yes:
        click.confirm(f"discard everything {host}'s twin got since the checkpoint before {to} "
                      "(upgrade steps from there run again)?", abort=True)
    finish_run(console, repair.revert(context, host, to, who or getpass.getuser()), context)


@click.command()
@HOST
@click.pass_context
def checkpoints(ctx: click.Context, host: str) -> None:
    """The checkpoints of HOST's twin that `upgrader revert` can go back to, with how much the
    twin wrote since each. They exist while the run is before its cutover window; they are
    merged back into the twin's disk before the cutover."""
    context, console = app_context(ctx, with_view=False)
    record, rows = repair.checkpoints(context, host)
    if not rows:
        console.print(f"{safe(host)}: no checkpoints (run {record.run_id}, phase {record.phase.value}); "
                      "one is taken before the first upgrade step")
        return
    table = Table(title=f"checkpoints of {host}'s twin (run {record.run_id})", title_justify="left")
    for column in ("before step", "taken", "written since", "revert with"):
        table.add_column(column)
    for row in rows:
        taken = row.taken.isoformat(timespec="seconds") if row.taken else "?"
        size = f"{row.bytes_since:,} bytes" if row.bytes_since is not None else "gone?"
        table.add_row(row.step, taken, size, f"upgrader revert {host} --to '{row.step}'")
    console.print(table)
