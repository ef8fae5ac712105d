"""The command line (click; see docs/architecture.md for why click and where invoke is used).

Exit codes (docs/cli.md): 0 ok/parked, or aborted/rolled back as the operator asked; 1 run failed
(or a question answered no); 2 bad input; 3 locked/busy; 4 corrupt state; 5 infrastructure
unreachable; 6 held; 70 internal error (debug log under the state dir); 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import NoReturn


def _exit_while_importing(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C/SIGTERM while the imports below run: nothing has happened yet, so exit 130 at once
    (a KeyboardInterrupt here would print a traceback: no handler is in place yet)."""
    sys.stderr.write("interrupted\n")
    raise SystemExit(130)


def _set_handlers(handlers: dict[int, object]) -> dict[int, object]:
    """Install `handlers` (main thread only; elsewhere a no-op); returns the previous ones."""
    previous: dict[int, object] = {}
    try:
        for signum, handler in handlers.items():
            if handler is None:  # installed outside Python: cannot be put back, leave it
                continue
            previous[signum] = signal.signal(signum, handler)  # type: ignore[arg-type]
    except ValueError:  # not the main thread: signals are not ours to handle
        pass
    return previous


_BEFORE_IMPORTS = _set_handlers({signal.SIGINT: _exit_while_importing, signal.SIGTERM: _exit_while_importing})

import click  # noqa: E402 - after the import-time signal handlers on purpose

from upgrader import __version__  # noqa: E402
from upgrader.cli.common import EXIT_INTERRUPTED, Globals, fail, internal_error  # noqa: E402
from upgrader.cli.lazy import LazyCommand, LazyGroup  # noqa: E402
from upgrader.config import load_settings  # noqa: E402
from upgrader.errors import Terminated, UpgraderError  # noqa: E402

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Every subcommand: imported when invoked, listed by --help from here (tests/cli/test_cli_main.py
# keeps the short help equal to the command's own docstring).
COMMANDS: dict[str, LazyCommand] = {
    "start": LazyCommand("upgrader.cli.run", "start", "Start the twin upgrade of HOST as described by the plan."),
    "preflight": LazyCommand("upgrader.cli.preflight", "preflight",
                             "Check, without starting anything, that HOST's upgrade by this plan can begin."),
    "resume": LazyCommand("upgrader.cli.run", "resume", "Continue HOST's unfinished run from its last checkpoint."),
    "retry": LazyCommand("upgrader.cli.repair", "retry",
                         "Run the failed step of HOST's held run again from scratch, then continue the run."),
    "skip": LazyCommand("upgrader.cli.repair", "skip",
                        "Mark the failed step of HOST's held run as done by hand, then continue the run."),
    "revert": LazyCommand("upgrader.cli.repair", "revert",
                          "Put the twin of HOST's held run back to the checkpoint taken before upgrade step N, "
                          "then run step N and every step after it again."),
    "checkpoints": LazyCommand("upgrader.cli.repair", "checkpoints",
                               "The checkpoints of HOST's twin that `upgrader revert` can go back to, with how much "
                               "the twin wrote since each."),
    "ssh": LazyCommand("upgrader.cli.ssh", "ssh",
                       "A shell on HOST's twin or prod, or one command there (exit code: the command's; 255: ssh "
                       "could not connect or the host key did not match)."),
    "status": LazyCommand("upgrader.cli.inspect", "status",
                          "The latest run of HOST (or of every host): state, phase, timings, figures."),
    "list": LazyCommand("upgrader.cli.inspect", "list_runs", "Every run of every host, oldest first."),
    "show": LazyCommand("upgrader.cli.inspect", "show",
                        "HOST's latest run journal: every step begun and done, with its outputs."),
    "abort": LazyCommand("upgrader.cli.run", "abort",
                         "Abort HOST's run before cutover (also a held run): the twin and its disks are removed, "
                         "prod's overlay is merged back, prod is left exactly as it was."),
    "rollback": LazyCommand("upgrader.cli.run", "rollback",
                            "Go back to the old VM after cutover (while it is kept): network back, reverse sync of "
                            "what was written since cutover, services restarted on the old VM, twin removed."),
    "decommission": LazyCommand("upgrader.cli.run", "decommission",
                                "Retire the old VM now instead of after `keep_old_for`: destroy, undefine, delete its "
                                "images (flattening the new prod first) and report the bytes freed."),
    "approve": LazyCommand("upgrader.cli.run", "approve",
                           "Approve HOST's cutover (plans with `approval: required`): recorded with who and when."),
    "run-due": LazyCommand("upgrader.cli.due", "run_due",
                           "Go on with every run whose time may have come: a cutover window that opened, a "
                           "reminder to send, an old VM to decommission."),
    "plan": LazyCommand("upgrader.cli.plan", "plan", "Check plan files and print their JSON Schema."),
    "lab": LazyCommand("upgrader.cli.lab", "lab",
                       "The rehearsal lab: a LabOS mailhost guest (TCG) in network namespaces of its own.",
                       optional=True),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="upgrader")
@click.option("--state-dir", envvar="UPGRADER_STATE_DIR", metavar="DIR",
              help="where runs are kept (default: ./state; also /etc/upgrader.yaml `state_dir`); "
                   "also accepted after the command")
@click.option("-q", "--quiet", is_flag=True, help="do not stream step output; also accepted after the command")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, quiet: bool) -> None:
    """Upgrade a stateful pet VM with (almost) zero downtime.

    \b
    snapshot -> staging twin -> upgrade -> validate -> pre-sync -> window
      -> cutover (quiesce, final sync, takeover) -> verify -> keep old VM -> decommission

    Every step is checkpointed; a run killed at any moment continues with `upgrader resume HOST`.
    Shell completion: eval "$(_UPGRADER_COMPLETE=bash_source upgrader)".
    """
    given = ctx.obj if isinstance(ctx.obj, Globals) else Globals(state_dir=None, quiet=False)
    given.state_dir, given.quiet = state_dir, quiet
    ctx.obj = given


_set_handlers(_BEFORE_IMPORTS)  # imports done: as they were, until main() installs its own


def _state_dir_option(argv: list[str]) -> str | None:
    """--state-dir as given, for the debug log of an error that happened before click's context."""
    for i, arg in enumerate(argv):
        if arg == "--state-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--state-dir="):
            return arg.split("=", 1)[1]
    return None


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM like Ctrl-C: raised in the main thread, so `finally` blocks (lock, sync key) run."""
    raise Terminated()


def _interrupted(exc: BaseException | None, given: Globals) -> NoReturn:
    """`interrupted` (Ctrl-C) or `terminated (SIGTERM)`; with the command that goes on when a run
    was at work (its host: `given.running`), below the live display (stopped first)."""
    for stop in given.on_interrupt:
        try:
            stop()
        except Exception:  # noqa: BLE001 - a display that cannot stop must not hide the message
            pass
    running = given.running
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    hint = f" — `upgrader resume {running}` continues from the last checkpoint" if running else ""
    sys.stderr.write(what + hint + "\n")  # plain: the interrupt may have come while the UI was being imported
    sys.exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    previous = _set_handlers({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate})
    try:
        _main(argv)
    finally:
        _set_handlers(previous)


def _main(argv: list[str] | None) -> NoReturn:
    given = Globals(state_dir=None, quiet=False)  # filled by the options; `running` by the run's events
    try:
        cli.main(args=argv, prog_name="upgrader", standalone_mode=False, obj=given)
    except UpgraderError as exc:
        fail(exc)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort, and a "no" to a question
        cause = exc.__cause__ or exc.__context__
        if not isinstance(cause, KeyboardInterrupt):  # "n", or no answer (end of input)
            sys.stderr.write("not confirmed: nothing was changed\n")
            sys.exit(1)
        _interrupted(cause, given)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc, given)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a debug log
        state_dir = given.state_dir or _state_dir_option(argv if argv is not None else sys.argv[1:])
        internal_error(exc, load_settings(state_dir).state_dir)
    sys.exit(0)


if __name__ == "__main__":
    main()
