"""preflight: is everything in place? Read-only; reports every inhibitor, then stops if any.

The full set of checks runs before the run is created (upgrader/preflight_checks.py, also
`upgrader preflight`); this step checks hypervisor, domain, space and SSH again, for a run that is
resumed after a crash or a failed start."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed, UpgraderError
from upgrader.phases import Phase
from upgrader.preflight_checks import MIN_FREE_BYTES, overlay_space
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.identity import claim_source

if TYPE_CHECKING:
    from upgrader.plan import Plan
    from upgrader.ports import DomainInfo


class Preflight:
    phase = Phase.PREFLIGHT

    def describe(self, plan: "Plan") -> list[str]:
        return [
            f"claim {plan.source.domain} for this run (recorded on the VM: no second run, under any name, may touch it)",
            f"connect to libvirt at {plan.source.libvirt_uri} and find domain {plan.source.domain} running",
            f"check that no domain named {plan.twin_name} exists yet",
            f"check free space for overlays in {plan.source.disk_dir or 'the disk directory'} (>= {MIN_FREE_BYTES >> 20} MiB)",
            f"SSH to prod {plan.ssh.prod.user}@{plan.ssh.prod.host}:{plan.ssh.prod.port} with pinned host keys",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        if ctx.record.vm is not None:  # the VM is claimed before anything else touches it
            claim_source(ctx)
        return Outcome(ctx.once("preflight", "check hypervisor, domain, space and SSH", lambda _: self._check(ctx)))

    def _check(self, ctx: StepContext) -> dict[str, Any]:
        plan, hv = ctx.plan, ctx.ports.hypervisor
        inhibitors: list[str] = []
        out: dict[str, Any] = {"hypervisor": hv.check()}
        domain = hv.domain(plan.source.domain)
        if domain is None:
            inhibitors.append(f"domain {plan.source.domain} not found at {plan.source.libvirt_uri}")
        else:
            if ctx.record.vm is not None and domain.uuid != ctx.record.vm.uuid:
                inhibitors.append(f"domain {plan.source.domain} is not the VM this run claimed (uuid {domain.uuid}, "
                                  f"recorded {ctx.record.vm.uuid})")
            if not domain.running:
                inhibitors.append(f"domain {plan.source.domain} is not running")
            out["free_bytes"], short = space_for_overlays(ctx, domain)
            if short:
                inhibitors.append(short)
            out["disks"] = domain.disks
        if hv.domain(plan.twin_name) is not None:
            inhibitors.append(f"a domain named {plan.twin_name} already exists")
        try:
            shell = ctx.ports.shells.connect("prod")
            out["prod_boot_id"] = shell.boot_id()
        except UpgraderError as exc:
            inhibitors.append(f"SSH to prod: {exc.message}")
        if inhibitors:
            raise StepFailed(
                "preflight found inhibitors:\n  - " + "\n  - ".join(inhibitors),
                hint="nothing was changed: fix them, then `upgrader start HOST --plan FILE` again",
            )
        return out


def space_for_overlays(ctx: StepContext, domain: "DomainInfo") -> tuple[int, str | None]:
    """Free bytes where the overlays go, and what is wrong if that is below the minimum."""
    return overlay_space(ctx.plan, ctx.ports.hypervisor, domain)
