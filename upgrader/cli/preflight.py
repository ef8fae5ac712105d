"""`upgrader preflight HOST --plan FILE`: every check `start` makes before it creates a run, run
read-only against the real systems (libvirt, SSH to prod); nothing is created, locked or claimed."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from upgrader import app
from upgrader.app_preflight import preflight as run_preflight
from upgrader.cli.common import make_console, state_root
from upgrader.store import RunStore


@click.command()
@click.argument("host", metavar="HOST")
@click.option("--plan", "plan", required=True, metavar="FILE",
              help="plan file; a bare name is looked up in the current directory, then in playbooks/")
@click.pass_context
def preflight(ctx: click.Context, host: str, plan: str) -> None:
    """Check, without starting anything, that HOST's upgrade by this plan can begin.

    \b
    The plan's SSH key and known_hosts files; a window still to come that can take a cutover;
    libvirt answers; the domain runs; no domain has the twin's name; disk space for overlays;
    memory for the twin; SSH to prod; rsync, ssh-keygen or dropbearkey, ssh or dbclient on prod;
    the sync paths exist on prod. Each check is printed with ✓ or ✗.

    Exit 0 when every check passes, 1 when one fails, 5 when libvirt or SSH to prod does not
    answer, 2 for a plan that does not parse.
    """
    context, console = app.Context(RunStore(state_root(ctx)), []), make_console()  # no event log: nothing happens
    path, parsed, report = run_preflight(context, app.StartOptions(host, plan))
    console.print(f"[bold]preflight[/]: {escape(host)} with plan {escape(str(path))} "
                  f"({escape(parsed.source.domain)} at {escape(parsed.source.libvirt_uri)}) — nothing is changed\n")
    for check in report.checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        console.print(f"  {mark} {escape(check.name)}: {escape(check.detail)}")
    if report.ok:
        console.print("\n[green]ok[/]: no inhibitors; `upgrader start` would begin")
        sys.exit(0)
    console.print(f"\n[red]{len(report.inhibitors)} inhibitor(s)[/]: fix them, then run preflight again")
    sys.exit(5 if any(c.unreachable for c in report.checks if not c.ok) else 1)
