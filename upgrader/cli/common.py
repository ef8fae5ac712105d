"""What every subcommand shares: settings, the app context, the console, error rendering.

Imported by `upgrader --help`: the heavy modules (the app, rich, pydantic through the record) are
imported inside the functions that need them, so that listing the commands stays fast
(docs/benchmarks.md, start-up)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

import click

from upgrader.config import load_settings
from upgrader.errors import InfraError, PlanError, UpgraderError
from upgrader.phases import UNSUCCESSFUL, Phase

if TYPE_CHECKING:
    from rich.console import Console

    from upgrader import app
    from upgrader.events import Event, Listener
    from upgrader.store import RunStore
    from upgrader.record import RunRecord

EXIT_OK = 0
EXIT_FAILED = 1  # the run failed: aborted/rolled back after a failure, failed, or a cleanup step failed
EXIT_HELD = 6  # the run is held: a step before cutover failed, the twin is kept for repair
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

# the operator's journal action that sends a run to each end it may ask for
_REQUESTED = {Phase.ABORTED: "abort", Phase.ROLLED_BACK: "rollback"}


@dataclass
class Globals:
    state_dir: str | None
    quiet: bool
    running: str | None = None  # the host whose run is at work in this process (the Ctrl-C hint names it)
    # what must happen before the interrupted message is printed (stop the live display)
    on_interrupt: list[Callable[[], None]] = field(default_factory=list)

    def track(self, event: Event) -> None:
        """Listener: which run is at work, from its start to its end."""
        from upgrader.events import RunEnded, RunStarted

        if isinstance(event, RunStarted):
            self.running = event.host
        elif isinstance(event, RunEnded):
            self.running = None


def globals_of(ctx: click.Context) -> Globals:
    return ctx.find_root().obj  # type: ignore[no-any-return]


def state_root(ctx: click.Context) -> Path:
    return load_settings(globals_of(ctx).state_dir).state_dir


def make_console(stderr: bool = False) -> Console:
    from upgrader.ui import make_console as make

    return make(stderr)


def app_context(ctx: click.Context, *, with_view: bool = True) -> tuple[app.Context, Console]:
    from upgrader import app
    from upgrader.store import RunStore
    from upgrader.testing import hooks
    from upgrader.ui import EventLog, RunView

    console = make_console()
    root = state_root(ctx)
    listeners: list[Listener] = [globals_of(ctx).track]
    if with_view:
        view = RunView(console, verbose=not globals_of(ctx).quiet)
        globals_of(ctx).on_interrupt.append(view.close)
        listeners.append(view)
    listeners.append(EventLog(root))
    if hooks.enabled():
        listeners.append(hooks.pause_listener)
    return app.Context(RunStore(root), listeners), console


def read_context(ctx: click.Context) -> tuple[RunStore, Console]:
    """The state dir's store and a console, for the read-only views that need no app (the status
    table): nothing heavy is imported."""
    from upgrader.store import RunStore

    return RunStore(state_root(ctx)), make_console()


def requested_end(record: RunRecord, journal: list[dict[str, object]]) -> bool:
    """The run ended aborted or rolled back because an operator asked for it (`upgrader abort`,
    `upgrader rollback`, an abort request honoured by the running process), not after a failure.
    The journal says so: an `operator` entry for that action (an automatic abort or rollback
    after a failure has none; `abort`/`rollback` that only finish one write none either)."""
    wanted = _REQUESTED.get(record.phase)
    if wanted is None:
        return False
    if record.phase == Phase.ABORTED and record.error is not None and record.error.kind == "AbortRequested":
        return True
    return any(e.get("kind") == "operator" and e.get("action") == wanted for e in journal)


def run_exit_code(record: RunRecord, journal: list[dict[str, object]]) -> int:
    """0 done/parked, or aborted/rolled back as the operator asked and cleanly (no cleanup error, no
    warning); 6 held; 1 failed (docs/cli.md, exit codes)."""
    if record.phase == Phase.HELD:
        return EXIT_HELD
    if record.cleanup_error is not None:
        return EXIT_FAILED
    if record.phase in UNSUCCESSFUL:
        clean = record.finished and not record.warnings  # a warning: e.g. data that may be only on the twin
        return EXIT_OK if clean and requested_end(record, journal) else EXIT_FAILED
    return EXIT_OK


def finish_run(console: Console, record: RunRecord | None, context: app.Context) -> None:
    """Print the report and exit with the run's code (run_exit_code). A decommission that failed
    because libvirt or SSH did not answer exits 5, as an unreachable infrastructure does
    everywhere else: the upgrade itself succeeded. A failed abort or rollback cleanup stays 1
    whatever the cause: the run failed, and it has not got back to where it was."""
    if record is None:
        return
    from upgrader.ui import report

    report(console, record)
    error = record.cleanup_error
    if error is not None and error.phase in (Phase.COMPLETED, Phase.DECOMMISSIONED) and _is_infra(error.kind):
        sys.exit(InfraError.exit_code)
    journal = context.store.journal(record.host, record.run_id) if record.phase in _REQUESTED else []
    sys.exit(run_exit_code(record, journal))


def _is_infra(kind: str | None) -> bool:
    """`kind` (a RunError's: the exception's class name) names InfraError or a subclass of it (a
    subclass is known once its module is imported: the failure was raised by this process's run)."""
    found: list[type[InfraError]] = [InfraError]
    names = set()
    while found:
        cls = found.pop()
        names.add(cls.__name__)
        found.extend(cls.__subclasses__())
    return kind in names


def fail(error: UpgraderError, console: Console | None = None) -> NoReturn:
    from upgrader.ui import safe

    console = console or make_console(stderr=True)
    lines = error.problems if isinstance(error, PlanError) else [error.message]
    for line in lines:
        console.print("[red]error:[/] " + safe(line))
    if error.hint:
        console.print("[dim]hint:[/] " + safe(error.hint))
    sys.exit(error.exit_code)


def internal_error(exc: BaseException, state_dir: Path) -> NoReturn:
    from upgrader.ui import safe

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
    from upgrader.store import check_dir, secure_open

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if not check_dir(state_dir):
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_dir(state_dir)
    path = state_dir / f"debug-{stamp}-{os.getpid()}.log"
    fd = secure_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(exc)))
    return path
