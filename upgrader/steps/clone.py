"""clone: define the twin on overlays over the frozen base, on the isolated staging segment,
start it and wait for SSH on the staging path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.phases import Phase
from upgrader.steps import takeover
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.identity import is_ours
from upgrader.steps.snapshot import snapshot_of

if TYPE_CHECKING:
    from upgrader.plan import Plan


class Clone:
    phase = Phase.CLONE

    def describe(self, plan: "Plan") -> list[str]:
        return [
            f"define {plan.twin_name} from {plan.source.domain}'s inactive XML: new name and UUID, "
            f"disks on new overlays over the snapshot, NICs on {plan.staging.network} "
            + ("(same MACs)" if plan.takeover.strategy == "mac_move" else "(MACs of its own: ip_move)"),
            f"start {plan.twin_name} and wait for SSH at {plan.ssh.staging.host} through the staging path",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        hv, plan = ctx.ports.hypervisor, ctx.plan
        twin = plan.twin_name

        def define(begin: dict[str, Any]) -> dict[str, Any]:
            snapshot = snapshot_of(ctx)
            hv.remove_orphans(twin, snapshot.bases)  # a define killed before the domain existed
            source = hv.domain(plan.source.domain)
            macs = {m: takeover.twin_mac(plan, m) for m in (source.nics if source else {})}
            info = hv.clone(plan.source.domain, twin, snapshot, plan.staging.network,
                            {m: t for m, t in macs.items() if m != t})
            return {"name": info.name, "uuid": info.uuid, "disks": info.disks, "nics": info.nics}

        def defined(_: dict[str, Any]) -> dict[str, Any] | None:
            info = hv.domain(twin)
            if info is None or not is_ours(ctx, twin, info):  # never adopt a domain of that name we did not define
                return None
            return {"name": info.name, "uuid": info.uuid, "disks": info.disks, "nics": info.nics}

        out = dict(ctx.once("clone.define", f"define twin {twin}", define, defined))

        def running(_: dict[str, Any]) -> dict[str, Any] | None:
            info = hv.domain(twin)
            return {"running": True} if info and info.running else None

        ctx.once("clone.start", f"start {twin}", lambda _: (hv.start(twin), {"running": True})[1], running)

        def wait_ssh(_: dict[str, Any]) -> dict[str, Any]:
            shell = ctx.ports.shells.connect("staging")
            boot_id = shell.boot_id()
            if not boot_id:
                raise StepFailed(f"{twin} answered SSH but reported no boot id")
            return {"boot_id": boot_id}

        out.update(ctx.once("clone.ssh", f"wait for SSH on {twin}", wait_ssh, lambda _: None))
        return Outcome(out)
