"""snapshot: external, disk-only, atomic snapshot of prod; prod continues on the new overlay and
the frozen base is what the twin starts from."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.phases import Phase
from upgrader.ports import SnapshotInfo
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.preflight import space_for_overlays

if TYPE_CHECKING:
    from upgrader.plan import Plan


def snapshot_name(run_id: str) -> str:
    return f"upgrader-{run_id}"


def snapshot_of(ctx: StepContext) -> SnapshotInfo:
    data = ctx.record.output("snapshot")
    return SnapshotInfo(name=data["name"], overlays=dict(data["overlays"]), bases=dict(data["bases"]))


class Snapshot:
    phase = Phase.SNAPSHOT

    def describe(self, plan: "Plan") -> list[str]:
        return [f"external disk-only atomic snapshot of {plan.source.domain}; prod keeps running on a new overlay"]

    def run(self, ctx: StepContext) -> Outcome:
        hv, domain = ctx.ports.hypervisor, ctx.plan.source.domain
        name = snapshot_name(ctx.run_id)

        def take(_: dict[str, Any]) -> dict[str, Any]:
            info = hv.domain(domain)
            if info is None:
                raise StepFailed(f"domain {domain} is gone", hint="`virsh -c URI list --all` shows what is defined")
            _, short = space_for_overlays(ctx, info)  # again: space may have gone since preflight
            if short:
                raise StepFailed(f"not taking the snapshot: {short}", hint="free space there, then `upgrader start` again")
            return asdict(hv.snapshot(domain, name, ctx.plan.source.disk_dir))

        def probe(_: dict[str, Any]) -> dict[str, Any] | None:
            found = hv.find_snapshot(domain, name)
            return asdict(found) if found else None

        return Outcome(ctx.once("snapshot", f"snapshot {domain} as {name}", take, probe))
