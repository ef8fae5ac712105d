"""`upgrader run-due`: the command cron or a systemd timer calls (docs/scheduling.md)."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from upgrader import app, app_due
from upgrader.app_due import DueOutcome, DueResult
from upgrader.cli.common import globals_of, make_console, state_root, write_debug_log
from upgrader.events import Listener
from upgrader.store import RunStore
from upgrader.ui import EventLog, IdleFilter, RunView, safe

EXIT_NEEDS_OPERATOR = 7  # some host's run could not go on by itself (see run_due's help)


@click.command(name="run-due")
@click.pass_context
def run_due(ctx: click.Context) -> None:
    """Go on with every run whose time may have come: a cutover window that opened, a reminder
    to send, an old VM to decommission. For cron or a systemd timer (docs/scheduling.md).

    \b
    Every host is on its own: an error on one (locked, corrupt state, a changed plan, a bug:
    written to a debug log under the state dir) is reported with its name; the others go on.
    A run whose time has not come parks again and leaves no trace; with -q such a call prints
    nothing at all. A run interrupted inside the cutover (URGENT: prod may be down) is resumed
    at once, from the run's plan copy, and the operators are told; one interrupted while it
    waited for its window (await_window: notices, the fresh pre-sync, read-only to prod) is
    resumed like a parked one; one interrupted elsewhere is listed with the resume hint, not
    resumed (a person started that work and should look first). A failed cleanup (abort,
    decommission) is listed, not retried every call.

    \b
    Exit: 0  nothing due, or every due run went on fine (parked, cut over, decommissioned)
          1  a run it resumed failed: aborted, rolled back, failed, held or a cleanup error
          7  a host needs an operator: an error, an interrupted run left for `upgrader resume`,
             a failed cleanup, or an URGENT run whose rollback failed (7 wins over 1)"""
    quiet = globals_of(ctx).quiet
    root = state_root(ctx)
    console = make_console()
    listeners: list[Listener] = [IdleFilter(RunView(console, verbose=not quiet)), IdleFilter(EventLog(root))]
    from upgrader.testing import hooks

    if hooks.enabled():
        listeners.append(hooks.pause_listener)
    context = app.Context(RunStore(root), listeners)
    results = app_due.run_due(context, bug_log=lambda exc: write_debug_log(exc, root))
    errors = make_console(stderr=True)
    for result in results:
        show(console, errors, result, quiet=quiet)
    if not results and not quiet:
        console.print("no parked runs")
    sys.exit(exit_code(results))


def exit_code(results: list[DueResult]) -> int:
    if any(r.needs_operator for r in results):
        return EXIT_NEEDS_OPERATOR
    return 1 if any(r.failed for r in results) else 0


def show(out: Console, errors: Console, result: DueResult, *, quiet: bool) -> None:
    """One line per host (an error: its hint too, on stderr); with -q nothing for a host with
    nothing due or run by another process."""
    host, record = safe(result.host), result.record
    if result.outcome in (DueOutcome.IDLE, DueOutcome.BUSY) and quiet:
        return
    if result.outcome is DueOutcome.ERROR:
        errors.print(f"[red]{host}: error:[/] {safe(result.message)}")
        if result.hint:
            errors.print(f"[dim]  hint: {safe(result.hint)}[/]")
        return
    assert record is not None
    where = record.phase.value + (f" — parked: {safe(record.parked)}" if record.parked else "")
    if result.outcome is DueOutcome.LEFT:
        label = "URGENT" if result.state is not None and result.state.value == "urgent" else str(result.state)
        errors.print(f"[yellow]{host}: {label} in {record.phase.value}[/] — {safe(result.message)}")
    elif result.outcome is DueOutcome.URGENT:
        out.print(f"[bold red]{host}: URGENT[/] — {safe(result.message)}; now {where}")
    elif result.outcome is DueOutcome.BUSY:
        out.print(f"{host}: active — {safe(result.message)}")
    else:
        out.print(f"{host}: {where}")
