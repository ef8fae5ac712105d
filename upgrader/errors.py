"""The one error tree. Every expected failure is an UpgraderError with a message, a hint and an
exit code; the CLI prints message + hint (never a traceback) and exits with the code.

Exit codes (documented in docs/cli.md):
  0  ok (run completed, or parked waiting for its window / keep period)
  1  the run failed (aborted, rolled back, failed) or a step failed
  2  bad input: plan file, arguments, unknown host
  3  locked / busy: another process holds the host
  4  state on disk is corrupt, inconsistent, unsafe or unwritable
  5  infrastructure unreachable or refused (libvirt, SSH)
  6  the run is held: a step before cutover failed, the twin is kept for repair (`upgrader status`)
  70 internal error (a bug): a debug log is written under state/
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from upgrader.ports import Result


class UpgraderError(Exception):
    exit_code: int = 1
    default_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class InputError(UpgraderError):
    """The user gave us something we cannot use."""

    exit_code = 2


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class PlanError(InputError):
    """A plan file is unreadable or invalid. `problems` holds one line per problem, each of the
    form `file:line:col: key.path: what is wrong`."""

    default_hint = "run `upgrader plan check FILE` for every problem; `upgrader plan schema` gives the JSON Schema"

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else "\n".join(problems), hint=hint)


class UnknownHost(InputError):
    default_hint = "`upgrader list` shows the hosts that have runs"


class NoRun(InputError):
    default_hint = "start one with `upgrader start HOST --plan FILE`"


class IllegalAction(InputError):
    """An operator asked for something the run's phase does not allow (abort after cutover...)."""


class LockedError(UpgraderError):
    exit_code = 3
    default_hint = "wait for it to finish, or check that process; a lock held by a dead process is freed by the OS"


class BusyError(UpgraderError):
    """The host has an active run already (start while a run is unfinished)."""

    exit_code = 3
    default_hint = "`upgrader resume HOST` continues it, `upgrader abort HOST` ends it"


class StateCorrupt(UpgraderError):
    exit_code = 4


class UnsafeState(StateCorrupt):
    """A state file or directory is a symlink, not a plain file/directory, not ours, or writable
    by others: refused before anything is read or written through it."""


class StateUnwritable(StateCorrupt):
    """The state directory cannot be written (read-only, full, over quota, permission denied)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so `finally` blocks run (not an UpgraderError:
    nothing may catch it as a step failure)."""


class InfraError(UpgraderError):
    """libvirt or SSH refused or is unreachable."""

    exit_code = 5


class ConnectionLost(InfraError):
    """An SSH connection died while a command ran: it may have finished, still run, or died."""

    default_hint = "the step is probed (done-marker, running pid) before anything is redone"


class ForwardRefused(InfraError):
    """The guest's sshd refused a remote port forward (a package proxy for the twin)."""

    default_hint = ("the twin's sshd must allow remote TCP forwarding (OpenSSH: `AllowTcpForwarding yes` or `remote` "
                    "in sshd_config; dropbear: started without -k and -j) and the port on its 127.0.0.1 must be free "
                    "(staging.packages.port picks another)")


class StepFailed(UpgraderError):
    """A phase's step failed; the engine decides between hold, abort and rollback. A failed
    command carries its Result (command, rc, output tail) for the record and the operator."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, result: "Result | None" = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class CheckFailed(StepFailed):
    """A validation or verification check did not hold."""


class UnsafeOperation(StepFailed):
    """Refused because it could destroy data (e.g. committing into a base another image uses)."""

    default_hint = "nothing was changed; inspect the chain with `qemu-img info --backing-chain`"


class RunFailed(UpgraderError):
    """The run ended in aborted / rolled_back / failed."""

    exit_code = 1
