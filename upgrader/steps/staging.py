"""Tear staging down and put prod's disks back as they were: used by abort and after rollback.
Order matters: the twin's overlay depends on the frozen base, so it goes first; only then may
prod's overlay be committed back into that base (the hypervisor adapter re-checks the chain).
Only what this run recorded is touched: a domain of the twin's name that is not ours is left
alone (and said so); the source is merged only while its UUID is the recorded one. Last, the
run's claim comes off the source."""

from __future__ import annotations

from typing import Any

from upgrader.events import Notice
from upgrader.steps.base import StepContext
from upgrader.steps.client_hold import release_if_held
from upgrader.steps.identity import is_ours, release_claim, require_ours
from upgrader.steps.snapshot import snapshot_name, snapshot_of
from upgrader.steps.sync import SYNC_KEYS, sweep_sync_keys


def teardown(ctx: StepContext, prefix: str) -> dict[str, Any]:
    hv, plan = ctx.ports.hypervisor, ctx.plan
    out: dict[str, Any] = {}
    if any(key.startswith(SYNC_KEYS) for key in ctx.journal.begun):
        sweep_sync_keys(ctx)  # while both guests still answer
    release_if_held(ctx, f"{prefix}.release_clients")  # never leave prod holding new connections
    if "clone.define" in ctx.journal.begun:
        twin = plan.twin_name

        def remove_twin(_: dict[str, Any]) -> dict[str, Any]:
            freed = 0
            info = hv.domain(twin)
            if info is not None and not is_ours(ctx, twin, info):
                ctx.emit(Notice(f"left {twin} (uuid {info.uuid}) alone: it is not the twin this run defined", "warning"))
                return {"bytes_freed": 0, "left_alone": twin}
            if info is not None:
                hv.destroy(twin)
                freed = hv.undefine(twin)
            if "snapshot" in ctx.journal.done:  # overlays of a define that never got its domain
                freed += hv.remove_orphans(twin, snapshot_of(ctx).bases)
            return {"bytes_freed": freed}

        out["twin"] = ctx.once(f"{prefix}.remove_twin", f"destroy and undefine {twin}", remove_twin)
    if "snapshot" in ctx.journal.begun:
        name = snapshot_name(ctx.run_id)

        def merge(_: dict[str, Any]) -> dict[str, Any]:
            require_ours(ctx, plan.source.domain, "merge the overlay of")
            found = hv.find_snapshot(plan.source.domain, name)
            if found is None and "snapshot" not in ctx.journal.done:
                return {"bytes_freed": 0}
            return {"bytes_freed": hv.merge_back(plan.source.domain, found or snapshot_of(ctx))}

        # in doubt: merged again - merge_back skips a disk already on its base and deletes the overlay a
        # kill between the pivot and the deletion left (found on the lab)
        out["merge"] = ctx.once(f"{prefix}.merge_back", f"merge {plan.source.domain}'s overlay back into its base", merge)
    if ctx.record.vm is not None:
        release_claim(ctx, f"{prefix}.release_claim", plan.source.domain)
    return out
