"""What a held run says about itself: one summary line and the exact commands to go on. Pure
functions of the record; the UI (`status`, the run's report) and the operator notice use them."""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from upgrader.durations import format_duration
from upgrader.step_keys import skippable

if TYPE_CHECKING:
    from upgrader.record import HeldStep



def summary(held: HeldStep, now: dt.datetime) -> str:
    """`held at upgrade[4] (portupgrade -af): exited 1, 3h12m ago`."""
    where = held.step or held.phase.value
    title = f" ({held.title})" if held.title and held.title != held.step else ""
    if held.rc is not None:
        what = f"exited {held.rc}"
    else:
        what = held.message.splitlines()[0].rstrip(": ") if held.message else "failed"
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



@dataclass(frozen=True)
class HeldView:
    """What the journal adds to run.json about a held run (app.held_view)."""

    reverting: str | None = None  # a revert to this step was interrupted: it must finish first
    reverted: str | None = None  # reverted to this step; the steps from there run on `retry`
    checkpoints: list[str] = field(default_factory=list)


def view_commands(host: str, held: HeldStep, view: HeldView, *, state_dir: str = "") -> tuple[str, list[str]]:
    """(what the twin is like now, the commands to run next) for a held run as the journal sees it."""
    if view.reverting:
        return (f"a revert of the twin to {view.reverting} was interrupted: it may be stopped or its disks half back",
                [command(state_dir, "retry", host), command(state_dir, "revert", host, "--to", view.reverting),
                 command(state_dir, "abort", host)])
    if view.reverted:
        return (f"the twin was reverted to {view.reverted}; the steps from there run again on retry",
                [command(state_dir, "ssh", host, "--twin"), command(state_dir, "retry", host),
                 command(state_dir, "abort", host)])
    return ("the twin keeps running on staging; prod is untouched",
            next_commands(host, held.step, view.checkpoints, state_dir=state_dir))
