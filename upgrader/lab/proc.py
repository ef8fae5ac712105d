"""Running commands: one result object per call (ok, rc, stdout, stderr, command), and an error
that carries it. Used for local commands (ip, qemu-img, ...) and for commands on guests."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from upgrader.lab.errors import LabError


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class ExecResult:
    command: str
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        out = _tail(self.stderr) or _tail(self.stdout)
        text = f"`{self.command}` exited with {self.rc}"
        return f"{text}:\n{out}" if out else text


class CommandFailed(LabError):
    """A command exited non-zero; `result` holds command, exit code and output."""

    def __init__(self, result: ExecResult, *, hint: str | None = None) -> None:
        self.result = result
        super().__init__(result.describe(), hint=hint)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = 120,
    env: Mapping[str, str] | None = None,
    hint: str | None = None,
) -> ExecResult:
    """Run argv (never through a shell); text output. Raises CommandFailed if check and rc != 0."""
    command = shlex.join(argv)
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(
            list(argv), input=data, capture_output=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"`{command}`: {exc.strerror}: {exc.filename}",
                       hint="the lab needs the Debian packages listed in docs/lab.md") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{command}` did not finish within {timeout:.0f} s", hint=hint) from exc
    result = ExecResult(
        command=command,
        rc=proc.returncode,
        stdout=proc.stdout.decode(errors="replace"),
        stderr=proc.stderr.decode(errors="replace"),
    )
    if check and not result.ok:
        raise CommandFailed(result, hint=hint)
    return result
