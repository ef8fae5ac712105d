"""The command line (click; see docs/architecture.md for why click and where invoke is used).

Exit codes: 0 ok/parked, 1 run failed, 2 bad input, 3 locked/busy, 4 corrupt state,
5 infrastructure unreachable, 70 internal error (debug log under the state dir), 130 interrupted.
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

from upgrader import __version__
from upgrader.cli.common import EXIT_INTERRUPTED, Globals, fail, internal_error, make_console
from upgrader.cli.inspect import list_runs, show, status
from upgrader.cli.plan import plan
from upgrader.cli.preflight import preflight
from upgrader.cli.repair import checkpoints, retry, revert, skip
from upgrader.cli.run import abort, approve, decommission, resume, rollback, run_due, start
from upgrader.cli.ssh import ssh
from upgrader.config import load_settings
from upgrader.errors import Terminated, UpgraderError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="upgrader")
@click.option("--state-dir", envvar="UPGRADER_STATE_DIR", metavar="DIR",
              help="where runs are kept (default: ./state; also /etc/upgrader.yaml `state_dir`)")
@click.option("-q", "--quiet", is_flag=True, help="do not stream step output")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, quiet: bool) -> None:
    """Upgrade a stateful pet VM with (almost) zero downtime.

    \b
    snapshot -> staging twin -> upgrade -> validate -> pre-sync -> window
      -> cutover (quiesce, final sync, takeover) -> verify -> keep old VM -> decommission

    Every step is checkpointed; a run killed at any moment continues with `upgrader resume HOST`.
    Shell completion: eval "$(_UPGRADER_COMPLETE=bash_source upgrader)".
    """
    ctx.obj = Globals(state_dir=state_dir, quiet=quiet)


for command in (start, resume, retry, skip, revert, checkpoints, ssh, status, list_runs, show, abort, rollback,
                decommission, approve, run_due, plan, preflight):
    cli.add_command(command)

try:
    from upgrader.cli.lab import lab

    cli.add_command(lab)
except ImportError:  # pragma: no cover - the lab is optional on hosts without it
    pass

_set_handlers(_BEFORE_IMPORTS)  # imports done: as they were, until main() installs its own


def _state_dir_option(argv: list[str]) -> str | None:
    """--state-dir as given, for the debug log of an error that happened before click's context."""
    for i, arg in enumerate(argv):
        if arg == "--state-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--state-dir="):
            return arg.split("=", 1)[1]
    return None


RESUME_HINT = "`upgrader resume HOST` continues from the last checkpoint"


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM like Ctrl-C: raised in the main thread, so `finally` blocks (lock, sync key) run."""
    raise Terminated()


def _interrupted(exc: BaseException | None) -> NoReturn:
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    hint = f" — {RESUME_HINT}" if isinstance(exc, KeyboardInterrupt) else ""
    make_console(stderr=True).print(what + hint)
    sys.exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    previous = _set_handlers({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate})
    try:
        _main(argv)
    finally:
        _set_handlers(previous)


def _main(argv: list[str] | None) -> NoReturn:
    try:
        cli.main(args=argv, prog_name="upgrader", standalone_mode=False)
    except UpgraderError as exc:
        fail(exc)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        _interrupted(exc.__cause__)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a debug log
        internal_error(exc, load_settings(_state_dir_option(argv if argv is not None else sys.argv[1:])).state_dir)
    sys.exit(0)


if __name__ == "__main__":
    main()
