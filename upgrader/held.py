"""What a held run says about itself: one summary line and the exact commands to go on. Pure
functions of the record; the UI (`status`, the run's report) and the operator notice use them."""

from __future__ import annotations

import datetime as dt
import shlex

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


def next_commands(host: str, held: HeldStep, checkpoints: list[str] | None = None) -> list[str]:
    """The commands an operator runs next, in the order they are usually needed."""
    h = shlex.quote(host)
    commands = [f"upgrader ssh {h} --twin", f"upgrader retry {h}"]
    if skippable(held.step):
        commands.append(f"upgrader skip {h} --reason TEXT")
    for name in checkpoints or []:
        commands.append(f"upgrader revert {h} --to {shlex.quote(name)}")
    commands.append(f"upgrader abort {h}")
    return commands
