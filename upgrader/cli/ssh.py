"""`upgrader ssh HOST [--twin | --prod] [-- CMD ...]`: the operator's way onto a run's VMs."""

from __future__ import annotations

import getpass
import sys

import click

from upgrader import app_ssh
from upgrader.cli.common import app_context
from upgrader.ui import make_console, safe


@click.command()
@click.argument("host", metavar="HOST")
@click.option("--twin/--prod", "twin", default=True,
              help="the twin (default) or prod; what each reaches in which phase: above")
@click.option("--by", "who", default=None, help="who, for the journal (default: the login name)")
@click.argument("command", nargs=-1, metavar="[-- CMD ...]")
@click.pass_context
def ssh(ctx: click.Context, host: str, twin: bool, who: str | None, command: tuple[str, ...]) -> None:
    """A shell on HOST's twin or prod, or one command there (exit code: the command's; 255: ssh
    could not connect or the host key did not match).

    Works on HOST's unfinished run, whatever it is doing (running in another process, parked,
    stopped by a crash): it takes no lock. It goes exactly the run's way: the plan's ssh target for the path, its user, key and
    proxy_command, and only the host keys the run accepts from the plan's known_hosts (no
    ~/.ssh/config, no other known_hosts). CMD's arguments are quoted one by one for the remote
    shell: `-- sh -c 'a | b'` for pipes and redirections. Each use is journaled (who, when, which
    machine, the command, its exit code): `upgrader show HOST`.

    \b
    --twin  the twin on the staging path, from the clone until the takeover (and again once a
            rollback gave the network back); through the prod path while it is prod (after the
            takeover). Refused before the clone, once the twin is being removed, and while a
            takeover or give-back is in doubt (`upgrader resume HOST` settles it).
    --prod  whatever answers on the production path: the old VM before the takeover, the twin
            (the new prod) after it. After the cutover the old VM is on no path (link down).

    With the plan's `staging.packages`, ssh to the twin on the staging path also opens the
    package proxy's forward (`-R 127.0.0.1:PORT:PROXYHOST:PROXYPORT`) and a shell prints the
    `export http_proxy=...` line that makes apt, pkg and fetch use it (docs/packages.md).
    """
    context, _ = app_context(ctx, with_view=False)
    options = app_ssh.SshOptions(host=host, machine="twin" if twin else "prod", command=command or None,
                                 by=who or getpass.getuser(), tty=sys.stdin.isatty())
    session = app_ssh.prepare(context, options)
    if session.call.command is None:
        console = make_console(stderr=True)
        console.print(
            f"[dim]upgrader:[/] {safe(session.route.reaches)} — {safe(session.call.where)} via ssh.{session.route.role} "
            f"of the plan; journaled in run {safe(session.record.run_id)}")
        if (hint := app_ssh.proxy_hint(session)) is not None:
            console.print(f"[dim]upgrader:[/] {safe(hint)}")
    sys.exit(app_ssh.run(context, session))
