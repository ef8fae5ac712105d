"""Use cases of a held run's repair that need the hypervisor: `upgrader revert` (the twin's disks
back to a checkpoint, the steps from there run again) and `upgrader checkpoints` (what a revert
can go back to). retry/skip are in app.py with the other commands that move a run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from upgrader.app import Context, _active, _engine, _plan_of, holding
from upgrader.engine import Engine
from upgrader.errors import IllegalAction
from upgrader.held import checkpoint_key, revert_targets
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.steps.revert import check_target, revert_twin


def revert(ctx: Context, host: str, to: str, who: str) -> RunRecord:
    """Put the held run's twin back to the checkpoint taken before `to` (upgrade[N]) and run N and
    every step after it again. A revert killed halfway is finished by the next revert to the
    same target (or by retry/resume)."""
    with holding(ctx, host) as record:
        engine = _engine(ctx, record)
        engine.require_held()
        if engine.journal.unapplied_rewind == to:  # reverted already; killed before going on
            engine.leave_hold("revert", into=Phase.UPGRADE, to=to, by=who)
            return engine.run(resumed=True)
        check_target(engine.ctx, to)
        done = revert_twin(engine.ctx, to)
        engine.leave_hold("revert", into=Phase.UPGRADE, to=to, by=who, bytes_freed=done["bytes_freed"])
        return engine.run(resumed=True)


@dataclass(frozen=True)
class CheckpointRow:
    step: str  # the checkpoint was taken before this step: `revert --to STEP`
    taken: dt.datetime | None
    bytes_since: int | None  # written on the twin since (None: the hypervisor does not know it)


def checkpoints(ctx: Context, host: str) -> tuple[RunRecord, list[CheckpointRow]]:
    """The twin's checkpoints a revert can go back to, oldest first, with what was written since.
    Read-only: takes no lock (works while another process runs the upgrade)."""
    record = _active(ctx, host, repair=False)
    plan = _plan_of(record)
    engine = Engine(ctx.store, record, plan, ctx.ports_factory(plan, record.run_id), [], now=ctx.now)
    targets = revert_targets(engine.journal.done)
    if not targets:
        return record, []
    if "checkpoints.merge" in engine.journal.done:
        raise IllegalAction("the twin's checkpoints were merged back before the cutover: none are left")
    sizes = {c.name: c.bytes for c in engine.ports.hypervisor.checkpoints(plan.twin_name)}
    rows = []
    for step in targets:
        begun = engine.journal.begun.get(checkpoint_key(step), {})
        taken = dt.datetime.fromisoformat(str(begun["ts"])) if begun.get("ts") else None
        rows.append(CheckpointRow(step, taken, sizes.get(step)))
    return record, rows


__all__ = ["CheckpointRow", "checkpoints", "revert"]
