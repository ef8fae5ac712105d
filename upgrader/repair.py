"""Use cases of a held run's repair that need the hypervisor: `upgrader revert` (the twin's disks
back to a checkpoint, the steps from there run again) and `upgrader checkpoints` (what a revert
can go back to). retry/skip are in app.py with the other commands that move a run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from upgrader.app import Context, _active, _engine, _plan_of, holding
from upgrader.engine import AbortRequested
from upgrader.steps.base import Journal, ReadOnlyJournal, StepContext
from upgrader.errors import IllegalAction
from upgrader.step_keys import MERGE_KEY, checkpoint_key, revert_targets
from upgrader.phases import BEFORE_CUTOVER, Phase
from upgrader.record import RunRecord
from upgrader.steps.revert import check_target, pending, revert_twin


def revert(ctx: Context, host: str, to: str, who: str) -> RunRecord:
    """Put the held run's twin back to the checkpoint taken before `to` (upgrade[N]) and run N and
    every step after it again. A revert killed halfway is finished by the next revert to the
    same target (or by retry/resume)."""
    with holding(ctx, host) as record:
        engine = _engine(ctx, record)
        engine.require_held()
        if engine.abort_requested():  # `upgrader abort` came first: engine.run aborts
            return engine.run(resumed=True)
        if engine.journal.unapplied_rewind == to and pending(engine.journal) is None:  # reverted; killed before going on
            engine.leave_hold("revert", into=Phase.UPGRADE, to=to, by=who)
            return engine.run(resumed=True)
        check_target(engine.ctx, to)
        try:
            done = revert_twin(engine.ctx, to)
        except AbortRequested as exc:  # asked while the twin was being reverted
            engine.abort_held(exc)
            return engine.run(resumed=True)
        engine.leave_hold("revert", into=Phase.UPGRADE, to=to, by=who, bytes_freed=done["bytes_freed"])
        return engine.run(resumed=True)


def check_revert(ctx: Context, host: str, to: str) -> None:
    """Would `revert` be refused? (IllegalAction, read-only: asked before the confirmation.)"""
    record = _active(ctx, host, repair=False)
    if record.phase != Phase.HELD:
        raise IllegalAction(f"the run is not held (phase {record.phase.value})",
                            hint=f"`upgrader status {host}` shows where it is")
    entries = ctx.store.journal(host, record.run_id)
    journal = Journal.from_entries(ReadOnlyJournal(), entries)
    check_target(StepContext(plan=_plan_of(record, ctx.store), record=record, ports=None, journal=journal,  # type: ignore[arg-type]
                             emit=lambda _: None), to)



@dataclass(frozen=True)
class CheckpointRow:
    step: str  # the checkpoint was taken before this step: `revert --to STEP`
    taken: dt.datetime | None
    bytes_since: int | None  # written on the twin since (None: the hypervisor does not know it)


def checkpoints(ctx: Context, host: str) -> tuple[RunRecord, list[CheckpointRow]]:
    """The twin's checkpoints a revert can go back to, oldest first, with what was written since.
    Read-only: takes no lock (works while another process runs the upgrade)."""
    record = _active(ctx, host, repair=False)
    journal = Journal.from_entries(ReadOnlyJournal(), ctx.store.journal(host, record.run_id))
    targets = revert_targets(journal.done)
    if not targets or record.phase not in BEFORE_CUTOVER or MERGE_KEY in journal.begun:
        return record, []  # none taken yet, or merged back (or being merged) before the cutover
    plan = _plan_of(record, ctx.store)
    sizes = {c.name: c.bytes for c in ctx.ports_factory(plan, record.run_id).hypervisor.checkpoints(plan.twin_name)}
    rows = []
    for step in targets:
        begun = journal.begun.get(checkpoint_key(step), {})
        taken = dt.datetime.fromisoformat(str(begun["ts"])) if begun.get("ts") else None
        rows.append(CheckpointRow(step, taken, sizes.get(step)))
    return record, rows


__all__ = ["CheckpointRow", "checkpoints", "revert"]
