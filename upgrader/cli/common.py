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
from upgrader.phases import UNSUCCESSFUL, Phase
from upgrader.record import RunRecord
from upgrader.store import RunStore, check_dir, secure_open
from upgrader.ui import EventLog, RunView, make_console, report, safe

EXIT_HELD = 6  # the run is held: a step before cutover failed, the twin is kept for repair
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
    if record.phase == Phase.HELD:
        sys.exit(EXIT_HELD)
    failed = record.phase in UNSUCCESSFUL or record.cleanup_error is not None
    sys.exit(1 if failed else 0)


def fail(error: UpgraderError, console: Console | None = None) -> NoReturn:
    console = console or make_console(stderr=True)
    lines = error.problems if isinstance(error, PlanError) else [error.message]
    for line in lines:
        console.print("[red]error:[/] " + safe(line))
    if error.hint:
        console.print("[dim]hint:[/] " + safe(error.hint))
    sys.exit(error.exit_code)


def internal_error(exc: BaseException, state_dir: Path) -> NoReturn:
    console = make_console(stderr=True)
    try:
        path = write_debug_log(exc, state_dir)
        where = f"details in {path}"
    except (OSError, UpgraderError):
        where = "could not write a debug log: " + "".join(traceback.format_exception_only(exc)).strip()
    console.print(f"[red]internal error:[/] {safe(type(exc).__name__ + ': ' + str(exc))}")
    console.print(f"[dim]{safe(where)} — please report it with that file[/]")
    sys.exit(EXIT_INTERNAL)


def write_debug_log(exc: BaseException, state_dir: Path) -> Path:
    """The traceback in STATE_DIR/debug-<stamp>-<pid>.log: a new 0600 file, never through a symlink,
    in a state dir that is ours (UnsafeState otherwise)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if not check_dir(state_dir):
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_dir(state_dir)
    path = state_dir / f"debug-{stamp}-{os.getpid()}.log"
    fd = secure_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(exc)))
    return path
