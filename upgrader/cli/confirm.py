"""The question `abort`, `rollback` and `decommission` ask before they destroy or change
something: one paragraph of what goes, from the run's record. `--yes` answers it for scripts; on
a non-terminal without `--yes` the command is refused (exit 2), never run unasked."""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING

import click

from upgrader.durations import format_duration
from upgrader.errors import InputError
from upgrader.phases import AFTER_CUTOVER, BEFORE_CUTOVER, Phase

if TYPE_CHECKING:
    from upgrader import app
    from upgrader.record import RunRecord


def interactive() -> bool:
    """May we ask? Only when a person can answer: stdin is a terminal."""
    return sys.stdin.isatty()


def _ago(record: RunRecord, now: dt.datetime) -> str:
    return format_duration(dt.timedelta(seconds=max(0, int((now - record.created).total_seconds()))))


def _disks(outputs: dict[str, object]) -> str:
    disks = outputs.get("disks")
    if not isinstance(disks, dict) or not disks:
        return "its disks"
    return "its disks (" + ", ".join(f"{target}: {path}" for target, path in sorted(disks.items())) + ")"


def abort_summary(record: RunRecord, now: dt.datetime) -> str:
    twin = record.output("clone.define")
    if twin.get("name"):
        gone = f"the twin {twin['name']} and {_disks(twin)} are removed"
    else:
        gone = "no twin was made yet; the snapshot is merged back into prod's disks"
    return (f"abort {record.host}'s run {record.run_id} (phase {record.phase.value}): {gone}; "
            f"{_ago(record, now)} of work on it are lost. Prod is left as it was.")


def rollback_summary(record: RunRecord, now: dt.datetime) -> str:
    twin = record.output("clone.define").get("name") or "the twin"
    old = record.vm.domain if record.vm is not None else "the old VM"
    return (f"roll back {record.host}'s run {record.run_id} (phase {record.phase.value}): the network goes back to "
            f"the old VM {old}, what was written on the new prod since the cutover is synced back to it, services "
            f"restart there and {twin} (the new prod) is removed; the upgrade is undone.")


def decommission_summary(record: RunRecord, now: dt.datetime) -> str:
    old = record.vm.domain if record.vm is not None else "the old VM"
    return (f"decommission {record.host}'s old VM: {old} and {_disks(record.output('preflight'))} are deleted "
            f"(the new prod is flattened first); a rollback is impossible afterwards.")


# command -> (phases the question is asked in, its summary); in any other phase the command
# itself refuses with its own message, so nothing is asked first
_QUESTIONS = {
    "abort": (BEFORE_CUTOVER | {Phase.ABORTED}, abort_summary),
    "rollback": (AFTER_CUTOVER | {Phase.ROLLING_BACK, Phase.ROLLED_BACK}, rollback_summary),
    "decommission": (frozenset({Phase.COMPLETED, Phase.DECOMMISSIONED}), decommission_summary),
}


def confirm(context: app.Context, command: str, host: str, yes: bool) -> None:
    """Ask before `command` changes HOST's run, unless `yes`; refuse (exit 2) when nobody can be
    asked. Nothing is asked for a run the command would refuse anyway (no run, finished, wrong
    phase): the command says why. Declined: click.Abort, which the CLI reports as "not confirmed:
    nothing was changed" (exit 1)."""
    if yes:
        return
    ids = context.store.runs(host)
    # read as the command will (run.json with its journal): a corrupt state is refused before asking
    record = context.store.load_checked(host, ids[-1], repair=False)[0] if ids else None
    phases, summary = _QUESTIONS[command]
    if record is None or record.phase not in phases or (record.finished and record.phase != Phase.COMPLETED):
        return
    text = summary(record, context.now())
    if not interactive():
        raise InputError(f"`upgrader {command} {host}` asks first and stdin is not a terminal: {text}",
                         hint=f"add --yes to run it without asking: `upgrader {command} {host} --yes`")
    click.echo(text, err=True)
    click.confirm("go on?", abort=True, err=True)
