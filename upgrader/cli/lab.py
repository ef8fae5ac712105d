"""`upgrader lab up|down|status|ssh NAME|console NAME`: the rehearsal lab (docs/lab.md)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from upgrader.cli.common import fail
from upgrader.errors import UpgraderError
from upgrader.lab.config import Fault, GuestKind

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)
out_console = Console()


@dataclass(frozen=True)
class LabOptions:
    lab_dir: str | None


def _lab(opts: LabOptions, quiet: bool = False):  # type: ignore[no-untyped-def]
    from upgrader.lab import Lab

    started = time.monotonic()

    def progress(msg: str) -> None:
        if not quiet:
            err_console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] " + escape(msg), highlight=False)

    return Lab(opts.lab_dir, progress=progress)


def handle_errors(fn: F) -> F:
    """An expected error prints one red line and its hint, and exits with its code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UpgraderError as exc:
            fail(exc, err_console)
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/] (`upgrader lab down` removes a half-built lab)")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(name="lab")
@click.option("--lab-dir", type=click.Path(file_okay=False), default=None,
              help="Where the lab lives [env UPGRADER_LAB_DIR; default /var/lib/upgrader-lab].")
@click.pass_context
def lab(ctx: click.Context, lab_dir: str | None) -> None:
    """The rehearsal lab: a LabOS mailhost guest (TCG) in network namespaces of its own."""
    ctx.obj = LabOptions(lab_dir=lab_dir)


@lab.command()
@click.option("--guest", type=click.Choice([g.value for g in GuestKind]), default=None,
              help="The mailhost's kind: labos (busybox, fast) or debian (Debian 12, systemd, Postfix, "
                   "Dovecot). Default: the lab's current kind, else labos.")
@click.option("--fault", "faults", multiple=True, type=click.Choice([f.value for f in Fault]),
              help="Set a lab fault switch in the mailhost guest (repeatable; per guest kind, docs/lab.md).")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the guest's SSH.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
@handle_errors
def up(opts: LabOptions, guest: str | None, faults: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Bring the lab up (idempotent: reuses what is healthy)."""
    status = _lab(opts).up(faults=faults, timeout=timeout, guest=guest)
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)


@lab.command()
@click.option("--purge", is_flag=True, help="Also remove the image cache (the next `up` rebuilds it).")
@click.pass_obj
@handle_errors
def down(opts: LabOptions, purge: bool) -> None:
    """Tear the lab down: every domain, the daemons, namespaces, bridges and files (idempotent)."""
    removed = _lab(opts).down(purge=purge)
    err_console.print(f"lab down: {len(removed)} item(s) removed" + (" (cache purged)" if purge else ""))


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
@handle_errors
def status(opts: LabOptions, as_json: bool) -> None:
    """Guests, IPs, segments and daemons of the lab."""
    st = _lab(opts, quiet=True).status()
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
@handle_errors
def ssh(opts: LabOptions, name: str, command: tuple[str, ...]) -> None:
    """SSH to a guest (NAME: a domain such as mailhost, or prod/staging) through its segment's
    access namespace; `lab ssh mailhost -- CMD...` runs CMD."""
    if command[:1] == ("--",):
        command = command[1:]
    target = _lab(opts, quiet=True).target(name)
    argv = target.openssh_argv(list(command) or None, tty=not command and sys.stdin.isatty())
    os.execvp(argv[0], argv)


@lab.command()
@click.argument("name")
@click.option("-n", "--lines", type=int, default=40, show_default=True)
@click.option("--follow/--no-follow", "-f", default=True, show_default=True)
@click.pass_obj
@handle_errors
def console(opts: LabOptions, name: str, lines: int, follow: bool) -> None:
    """Tail a guest's serial console log."""
    from upgrader.errors import InputError

    lab_ = _lab(opts, quiet=True)
    path: str | None = None
    try:
        path = next((g["console_log"] for g in lab_.status()["guests"] if g["name"] == name), None)
    except UpgraderError:
        path = None
    if path is None:
        path = str(lab_.paths.console_log(name))
    if not Path(path).exists():
        raise InputError(f"no console log for {name!r} at {path}", hint="`upgrader lab status` lists the guests")
    argv = ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [path]
    os.execvp(argv[0], argv)


def _print_status(st: dict[str, Any]) -> None:
    state = "[green]up[/green]" if st["up"] else "[red]not up[/red]"
    out_console.print(f"lab {state}  dir {st['lab_dir']}  uri {st['uri']}", highlight=False)

    guests = Table(title="guests", title_justify="left")
    for col in ("name", "state", "segment", "ip", "mac", "bridge"):
        guests.add_column(col)
    for g in st["guests"]:
        guests.add_row(g["name"], g["state"], g["segment"] or "-", g["ip"] or "-",
                       ", ".join(g["macs"]) or "-", ", ".join(g["bridges"]) or "-")
    if not st["guests"]:
        guests.add_row("-", "-", "-", "-", "-", "-")
    out_console.print(guests)

    segs = Table(title="segments", title_justify="left")
    for col in ("segment", "bridge", "present", "access ns", "access ip", "proxy command"):
        segs.add_column(col)
    for s in st["segments"]:
        segs.add_row(s["segment"], s["bridge"], "yes" if s["present"] else "no", s["access_namespace"],
                     s["access_ip"], s["proxy_command"])
    c = st["client"]
    segs.add_row("(client)", "upgprod0", "yes" if c["present"] else "no", c["namespace"], c["ip"], "-")
    out_console.print(segs)

    ds = Table(title="daemons", title_justify="left")
    for col in ("daemon", "pid", "alive", "pidfile"):
        ds.add_column(col)
    for d in st["daemons"]:
        ds.add_row(d["name"], str(d["pid"] or "-"), "yes" if d["alive"] else "no", d["pidfile"])
    out_console.print(ds)
    plan = st["plan"]
    out_console.print(f"ssh key {plan['ssh_key']}  known_hosts {plan['known_hosts']}", highlight=False)
    proxy = st.get("package_proxy") or {}
    out_console.print(f"guest {st.get('guest', 'labos')}  package proxy "
                      + (f"{proxy['url']} (pid {proxy['pid']})" if proxy.get("pid") else "not running"),
                      highlight=False)


if __name__ == "__main__":
    lab()


@lab.command()
@click.option("--show", "show_n", type=int, default=None, metavar="N", help="print message N (1 = oldest) in full")
@click.pass_obj
@handle_errors
def mail(opts: LabOptions, show_n: int | None) -> None:
    """What customers were sent: the notices the lab's SMTP sink (127.0.0.1:2525) received.

    Runs send there with UPGRADER_SMTP_HOST=127.0.0.1 UPGRADER_SMTP_PORT=2525."""
    from rich.table import Table

    from upgrader.errors import InputError
    from upgrader.lab.mailsink import received

    lab_ = _lab(opts, quiet=True)
    messages = received(lab_.paths.mail) if lab_.paths.mail.exists() else []
    console = Console()
    if show_n is not None:
        if not 1 <= show_n <= len(messages):
            raise InputError(f"no message {show_n}: the sink holds {len(messages)}")
        sys.stdout.write(messages[show_n - 1].path.read_text(errors="replace"))
        return
    if not messages:
        console.print("no notices received yet (the sink listens on 127.0.0.1:2525)")
        return
    table = Table()
    for column in ("#", "date", "kind", "to", "subject", "invite"):
        table.add_column(column)
    for n, r in enumerate(messages, 1):
        invite = "-"
        if r.invite:
            import icalendar

            event = icalendar.Calendar.from_ical(r.invite).walk("VEVENT")[0]
            invite = f"{event['DTSTART'].dt:%Y-%m-%d %H:%M} UTC, seq {event.get('SEQUENCE', 0)}"
        table.add_row(str(n), str(r.message.get("Date", "")), r.kind, str(r.message.get("To", "")),
                      str(r.message.get("Subject", "")), invite)
    console.print(table)
