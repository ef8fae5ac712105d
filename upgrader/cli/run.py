"""`upgrader start`, `resume`, `abort`, `rollback`, `decommission`: the commands that move a run."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from upgrader import app
from upgrader.cli.common import app_context, finish_run
from upgrader.cli.common import make_console
from upgrader.cli.confirm import confirm

HOST = click.argument("host", metavar="HOST")
YES = click.option("--yes", is_flag=True, help="do not ask (for scripts); without it a terminal is asked, "
                   "anything else is refused")


@click.command()
@HOST
@click.option("--plan", "plan", required=True, metavar="FILE",
              help="plan file; a bare name is looked up in the current directory, then in playbooks/")
@click.option("--dry-run", is_flag=True, help="print what every phase would do; touch nothing")
@click.option("--now", is_flag=True, help="do not wait for the plan's window: cut over right after pre-sync")
@click.option("--yes", is_flag=True, help="confirm --now when the plan has a window (recorded in the journal)")
@click.option("--detach", is_flag=True, help="run in the background, in its own session (a closed SSH session does not "
                                            "stop it), logging to STATE/HOST/detached-*.log; prints the pid")
@click.pass_context
def start(ctx: click.Context, host: str, plan: str, dry_run: bool, now: bool, yes: bool, detach: bool) -> None:
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
    if detach:
        from upgrader.cli.common import globals_of, state_root
        from upgrader.cli.detach import start_detached

        sys.exit(start_detached(make_console(), state_root(ctx), host, plan, now=now, yes=yes, quiet=globals_of(ctx).quiet))
    context, console = app_context(ctx)
    finish_run(console, app.start(context, app.StartOptions(host, plan, now, yes)), context)


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
    finish_run(console, app.resume(context, host, now=now, yes=yes, who=who or getpass.getuser()), context)


@click.command()
@HOST
@YES
@click.pass_context
def abort(ctx: click.Context, host: str, yes: bool) -> None:
    """Abort HOST's run before cutover (also a held run): the twin and its disks are removed, prod's overlay is
    merged back, prod is left exactly as it was. If another process runs it, that process is
    asked to stop at its next step. Asks first (the twin, its disks and the hours of work on it
    go); exit 0 once aborted."""
    context, console = app_context(ctx)
    confirm(context, "abort", host, yes)
    finish_run(console, app.abort(context, host), context)


@click.command()
@HOST
@YES
@click.pass_context
def rollback(ctx: click.Context, host: str, yes: bool) -> None:
    """Go back to the old VM after cutover (while it is kept): network back, reverse sync of
    what was written since cutover, services restarted on the old VM, twin removed.

    \b
    If the new prod does not answer, the network and services go back without the reverse sync
    and the twin is stopped and kept with its disks; `status` says which data may be only there.
    Refused once decommission began (it only goes forward) or when the old VM is gone.
    Asks first; exit 0 once rolled back."""
    context, console = app_context(ctx)
    confirm(context, "rollback", host, yes)
    finish_run(console, app.rollback(context, host), context)


@click.command()
@HOST
@YES
@click.pass_context
def decommission(ctx: click.Context, host: str, yes: bool) -> None:
    """Retire the old VM now instead of after `keep_old_for`: destroy, undefine, delete its
    images (flattening the new prod first) and report the bytes freed. Once begun it only goes
    forward: `rollback` is refused from then on, and `resume` finishes a decommission that was
    interrupted. Asks first (the old VM's disks are deleted)."""
    context, console = app_context(ctx)
    confirm(context, "decommission", host, yes)
    finish_run(console, app.decommission(context, host), context)


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
