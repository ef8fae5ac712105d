"""`upgrader start`, `resume`, `abort`, `rollback`, `decommission`: the commands that move a run."""

from __future__ import annotations

import click
from rich.markup import escape

from upgrader import app
from upgrader.cli.common import app_context, finish_run
from upgrader.cli.common import make_console

HOST = click.argument("host", metavar="HOST")


@click.command()
@HOST
@click.option("--plan", "plan", required=True, metavar="FILE",
              help="plan file; a bare name is looked up in the current directory, then in playbooks/")
@click.option("--dry-run", is_flag=True, help="print what every phase would do; touch nothing")
@click.option("--now", is_flag=True, help="do not wait for the plan's window: cut over right after pre-sync")
@click.option("--yes", is_flag=True, help="confirm --now when the plan has a window (recorded in the journal)")
@click.pass_context
def start(ctx: click.Context, host: str, plan: str, dry_run: bool, now: bool, yes: bool) -> None:
    """Start the twin upgrade of HOST as described by the plan.

    Snapshot, clone to a staging twin, upgrade it, validate, pre-sync, wait for the window,
    cut over, verify (rolling back on failure) and keep the old VM for `keep_old_for`. Every
    step is checkpointed under the state directory: if this process dies, `upgrader resume
    HOST` continues where it stopped.
    """
    if dry_run:
        console = make_console()
        path, parsed, phases = app.dry_run(app.StartOptions(host, plan, now, yes))
        console.print(f"[bold]dry run[/]: {escape(host)} with plan {escape(str(path))} — nothing is touched\n")
        for n, item in enumerate(phases, 1):
            console.print(f"[bold]{n:2}. {item.phase.value}[/]")
            for action in item.actions:
                console.print(f"      {escape(action)}")
        return
    context, console = app_context(ctx)
    finish_run(console, app.start(context, app.StartOptions(host, plan, now, yes)))


@click.command()
@HOST
@click.option("--now", is_flag=True, help="cut over without waiting for the window (needs --yes; recorded in the journal)")
@click.option("--yes", is_flag=True, help="confirm --now")
@click.option("--by", "who", default=None, help="who resumes a held run, for the journal (default: the login name)")
@click.pass_context
def resume(ctx: click.Context, host: str, now: bool, yes: bool, who: str | None) -> None:
    """Continue HOST's unfinished run from its last checkpoint.

    A step that had begun but not finished is probed first (is its effect already in place?)
    and is only redone if it is not: nothing is done twice. A held run is retried (as
    `upgrader retry HOST`).
    """
    import getpass

    context, console = app_context(ctx)
    finish_run(console, app.resume(context, host, now=now, yes=yes, who=who or getpass.getuser()))


@click.command()
@HOST
@click.pass_context
def abort(ctx: click.Context, host: str) -> None:
    """Abort HOST's run before cutover (also a held run): the twin and its disks are removed, prod's overlay is
    merged back, prod is left exactly as it was. If another process runs it, that process is
    asked to stop at its next step."""
    context, console = app_context(ctx)
    finish_run(console, app.abort(context, host))


@click.command()
@HOST
@click.pass_context
def rollback(ctx: click.Context, host: str) -> None:
    """Go back to the old VM after cutover (while it is kept): network back, reverse sync of
    what was written since cutover, services restarted on the old VM, twin removed.

    \b
    If the new prod does not answer, the network and services go back without the reverse sync
    and the twin is stopped and kept with its disks; `status` says which data may be only there.
    Refused once decommission began (it only goes forward) or when the old VM is gone."""
    context, console = app_context(ctx)
    finish_run(console, app.rollback(context, host))


@click.command()
@HOST
@click.pass_context
def decommission(ctx: click.Context, host: str) -> None:
    """Retire the old VM now instead of after `keep_old_for`: destroy, undefine, delete its
    images (flattening the new prod first) and report the bytes freed. Once begun it only goes
    forward: `rollback` is refused from then on, and `resume` finishes a decommission that was
    interrupted."""
    context, console = app_context(ctx)
    finish_run(console, app.decommission(context, host))


@click.command(name="run-due")
@click.pass_context
def run_due(ctx: click.Context) -> None:
    """Resume every parked run whose time may have come: a cutover window that opened, a
    reminder to send, an old VM to decommission. For cron or a systemd timer (docs/scheduling.md).
    Runs whose time has not come park again at once; a host another process holds is skipped."""
    context, console = app_context(ctx)
    results = app.run_due(context)
    failed = False
    for result in results:
        if result.record is None:
            console.print(f"{result.host}: skipped ({result.skipped})")
            continue
        r = result.record
        failed |= r.phase.value in ("aborted", "rolled_back", "failed") or r.cleanup_error is not None
        console.print(f"{result.host}: {r.phase.value}" + (f" — parked: {r.parked}" if r.parked else ""))
    if not results:
        console.print("no parked runs")
    raise SystemExit(1 if failed else 0)


@click.command()
@HOST
@click.option("--by", "who", default=None, help="who approves (default: the login name)")
@click.pass_context
def approve(ctx: click.Context, host: str, who: str | None) -> None:
    """Approve HOST's cutover (plans with `approval: required`): recorded with who and when."""
    import getpass

    context, console = app_context(ctx, with_view=False)
    name = who or getpass.getuser()
    record = app.approve(context, host, name)
    console.print(f"approved by {name}; run {record.run_id} goes on at the next `upgrader resume {host}` or `upgrader run-due` (in its window, if the plan has one)")
