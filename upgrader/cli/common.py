"""What every subcommand shares: settings, the app context, the console, error rendering."""

from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console

from upgrader import app
from upgrader.config import load_settings
from upgrader.errors import PlanError, UpgraderError
from upgrader.events import Listener
from upgrader.phases import UNSUCCESSFUL
from upgrader.record import RunRecord
from upgrader.store import RunStore
from upgrader.ui import EventLog, RunView, make_console, report

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


@dataclass
class Globals:
    state_dir: str | None
    quiet: bool


def globals_of(ctx: click.Context) -> Globals:
    return ctx.find_root().obj  # type: ignore[no-any-return]


def state_root(ctx: click.Context) -> Path:
    return load_settings(globals_of(ctx).state_dir).state_dir


def app_context(ctx: click.Context, *, with_view: bool = True) -> tuple[app.Context, Console]:
    console = make_console()
    root = state_root(ctx)
    listeners: list[Listener] = []
    if with_view:
        listeners.append(RunView(console, verbose=not globals_of(ctx).quiet))
    listeners.append(EventLog(root))
    from upgrader.testing import hooks

    if hooks.enabled():
        listeners.append(hooks.pause_listener)
    return app.Context(RunStore(root), listeners), console


def finish_run(console: Console, record: RunRecord | None) -> None:
    """Print the report and exit with the run's code: 0 done/parked, 1 failed/aborted/rolled back."""
    if record is None:
        return
    report(console, record)
    failed = record.phase in UNSUCCESSFUL or record.cleanup_error is not None
    sys.exit(1 if failed else 0)


def fail(error: UpgraderError, console: Console | None = None) -> NoReturn:
    console = console or make_console(stderr=True)
    lines = error.problems if isinstance(error, PlanError) else [error.message]
    for line in lines:
        console.print("[red]error:[/] " + _escape(line))
    if error.hint:
        console.print("[dim]hint:[/] " + _escape(error.hint))
    sys.exit(error.exit_code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def internal_error(exc: BaseException, state_dir: Path) -> NoReturn:
    console = make_console(stderr=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / f"debug-{stamp}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(exc)))
        where = f"details in {path}"
    except OSError:
        where = "could not write a debug log: " + "".join(traceback.format_exception_only(exc)).strip()
    console.print(f"[red]internal error:[/] {_escape(type(exc).__name__ + ': ' + str(exc))}")
    console.print(f"[dim]{_escape(where)} — please report it with that file[/]")
    sys.exit(EXIT_INTERNAL)
