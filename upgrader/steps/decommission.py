"""completed: the old VM is kept (link down) for keep_old_for; then, or when the operator asks,
decommission: flatten the new prod off the shared base, destroy and undefine the old VM and
delete the images nothing depends on any more. Reports the bytes freed."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from upgrader.errors import UnsafeOperation
from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.identity import release_claim, require_ours
from upgrader.durations import format_duration

if TYPE_CHECKING:
    from upgrader.plan import Plan


def decommission_began(ctx: StepContext) -> bool:
    """Once stopping the old VM began, it may be gone: only forward from there. (Flattening the
    new prod first touches nothing a rollback needs.)"""
    return "decommission.destroy" in ctx.journal.begun


def due_time(ctx: StepContext) -> dt.datetime:
    verified = ctx.record.output("verify").get("at")
    base = dt.datetime.fromisoformat(verified) if verified else ctx.now()
    return base + ctx.plan.keep_old_for


class Completed:
    phase = Phase.COMPLETED

    def describe(self, plan: "Plan") -> list[str]:
        return [
            f"keep {plan.source.domain} (link down) for {format_duration(plan.keep_old_for)}; `upgrader rollback HOST` works until then",
            f"decommission: flatten {plan.twin_name} off the shared base, destroy and undefine {plan.source.domain}, "
            "delete images nothing depends on, report bytes freed",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        due = due_time(ctx)
        if ctx.now() < due and not ctx.force_decommission and not decommission_began(ctx):
            return Outcome(park=f"old VM {ctx.plan.source.domain} kept until {due.isoformat(timespec='seconds')}; "
                           "`upgrader decommission HOST` does it now, `upgrader rollback HOST` goes back")
        hv, plan = ctx.ports.hypervisor, ctx.plan
        old, twin = plan.source.domain, plan.twin_name

        def flatten(_: dict[str, Any]) -> dict[str, Any]:
            if require_ours(ctx, twin, "flatten") is None:
                raise UnsafeOperation(f"{twin}, the new prod, is gone", hint="nothing was decommissioned; check `virsh list --all`")
            hv.flatten(twin)
            return {}

        def destroy(_: dict[str, Any]) -> dict[str, Any]:
            if require_ours(ctx, old, "stop"):
                hv.destroy(old)
            return {}

        ctx.once("decommission.flatten", f"flatten {twin} off the shared base", flatten)
        ctx.once("decommission.destroy", f"stop {old}", destroy)

        # The image chains are journaled first: killed between the undefine and the deletions,
        # the probe finishes the deletions instead of leaving the old VM's disks behind.
        def undefine(begin: dict[str, Any]) -> dict[str, Any]:
            if require_ours(ctx, old, "undefine"):
                return {"bytes_freed": hv.undefine(old)}
            return {"bytes_freed": hv.delete_unused(begin.get("chains", []))}

        def undefined(begin: dict[str, Any]) -> dict[str, Any] | None:
            if hv.domain(old) is not None:
                return None
            return {"bytes_freed": hv.delete_unused(begin.get("chains", [])), "probed": True}

        freed = ctx.once("decommission.undefine", f"undefine {old} and delete its images", undefine, undefined,
                         lambda: {"chains": hv.disk_chains(old)})
        release_claim(ctx, "decommission.release_claim", twin)  # the new prod is free for a next run
        return Outcome({"bytes_freed": freed["bytes_freed"]})
