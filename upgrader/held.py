"""What a held run says about itself: one summary line and the exact commands to go on. Pure
functions of the record; the UI (`status`, the run's report) and the operator notice use them."""

from __future__ import annotations

import datetime as dt
import shlex
from typing import Iterable

from upgrader.durations import format_duration
from upgrader.record import HeldStep

SKIPPABLE_PREFIXES = ("upgrade[", "validate_staging", "presync.")


def skippable(step: str | None) -> bool:
    """A step whose effect the operator can stand in for by hand: an upgrade command, the
    validation, a pre-sync pass. Not the clone (later steps need the twin it defines)."""
    return step is not None and step.startswith(SKIPPABLE_PREFIXES)


def summary(held: HeldStep, now: dt.datetime) -> str:
    """`held at upgrade[4] (portupgrade -af): exited 1, 3h12m ago`."""
    where = held.step or held.phase.value
    title = f" ({held.title})" if held.title and held.title != held.step else ""
    if held.rc is not None:
        what = f"exited {held.rc}"
    else:
        what = held.message.splitlines()[0] if held.message else "failed"
    age = max(now - held.since, dt.timedelta(0))
    if age >= dt.timedelta(hours=1):  # "3h12m", not "3h12m5s"
        age = dt.timedelta(minutes=int(age.total_seconds() // 60))
    ago = format_duration(age)
    return f"held at {where}{title}: {what}, {ago} ago"


def command(state_dir: str, *words: str) -> str:
    """`upgrader [--state-dir DIR] WORDS...`, every word shell-quoted (a step key like upgrade[4]
    is a glob to the shell)."""
    prefix = ["upgrader", "--state-dir", state_dir] if state_dir else ["upgrader"]
    return " ".join(shlex.quote(word) for word in (*prefix, *words))


def next_commands(host: str, step: str | None, checkpoints: list[str] | None = None, *, state_dir: str = "") -> list[str]:
    """What an operator runs next on a run held at `step`, in the order it is usually needed;
    `checkpoints`: the step keys `revert --to` can go back to."""
    commands = [command(state_dir, "ssh", host, "--twin"), command(state_dir, "retry", host)]
    if skippable(step):
        commands.append(command(state_dir, "skip", host, "--reason", "TEXT"))
    commands += [command(state_dir, "revert", host, "--to", key) for key in checkpoints or []]
    commands.append(command(state_dir, "abort", host))
    return commands


CHECKPOINT_PREFIX = "checkpoint."


def checkpoint_key(step: str) -> str:
    """The journal key of the checkpoint taken before `step` ("upgrade[3]")."""
    return CHECKPOINT_PREFIX + step


def revert_targets(done: Iterable[str]) -> list[str]:
    """The steps `revert --to` can go back to: those a checkpoint was taken before."""
    return [key[len(CHECKPOINT_PREFIX):] for key in done if key.startswith(CHECKPOINT_PREFIX)]
