"""completed: the old VM is kept (link down) for keep_old_for; then, or when the operator asks,
decommission: flatten the new prod off the shared base, read the old VM's host-level settings,
destroy and undefine the old VM, delete the images nothing depends on any more, and give the new
prod the old VM's settings. Reports the bytes freed.

Host-level settings are those the domain XML does not hold, so the clone did not copy them: the
autostart flag (libvirt keeps it as a link beside the definition). <title>, <description>,
<metadata>, memory, CPUs and devices are in the XML and came with the clone. The names stay: the
new prod is still `<domain>-twin` (libvirt renames only a shut-off domain, which would cost a
boot's downtime; docs/operations.md)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from upgrader.errors import UnsafeOperation
from upgrader.events import Notice
from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.identity import release_claim, require_ours
from upgrader.durations import format_duration

if TYPE_CHECKING:
    from upgrader.plan import Plan


SETTINGS_KEY = "decommission.host_settings"
AUTOSTART_KEY = "decommission.autostart"


class HostSettings(BaseModel):
    """The old VM's host-level settings, read before it is stopped (journaled as
    `decommission.host_settings`), carried over to the new prod once the old VM is gone."""

    autostart: bool | None  # None: the old VM was gone before they were read (nothing carried)


class AutostartCarried(BaseModel):
    """The new prod's autostart once the old VM's was carried over (`decommission.autostart`)."""

    autostart: bool | None  # what the new prod has now; None: unknown, left as it was
    was: bool | None = None  # what it had before; None when the probe found it in place already
    probed: bool = False


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
            f"give {plan.twin_name} {plan.source.domain}'s autostart setting; the new prod keeps the name {plan.twin_name}",
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
        settings = read_host_settings(ctx)
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
        carried = carry_autostart(ctx, settings)
        release_claim(ctx, "decommission.release_claim", twin)  # the new prod is free for a next run
        return Outcome({"bytes_freed": freed["bytes_freed"], "autostart": carried.autostart})


def read_host_settings(ctx: StepContext) -> HostSettings:
    """Journaled before the old VM is stopped: a read, redone if in doubt (the old VM is still
    defined until the undefine, which comes after this is done)."""
    hv, old = ctx.ports.hypervisor, ctx.plan.source.domain

    def read(_: dict[str, Any]) -> dict[str, Any]:
        if require_ours(ctx, old, "read the settings of") is None:  # a decommission begun before this step existed
            ctx.emit(Notice(f"{old} is gone already: its autostart is not known and is not carried over to "
                            f"{ctx.plan.twin_name} (`virsh autostart {ctx.plan.twin_name}` sets it)", "warning"))
            return HostSettings(autostart=None).model_dump()
        return HostSettings(autostart=hv.autostart(old)).model_dump()

    return HostSettings.model_validate(ctx.once(SETTINGS_KEY, f"read {old}'s host-level settings (autostart)", read))


def carry_autostart(ctx: StepContext, settings: HostSettings) -> AutostartCarried:
    """After the undefine: the new prod starts with the hypervisor exactly when the old VM did.
    Idempotent (set only when it differs) and probed (in doubt: done if it has the wanted value)."""
    hv, twin, wanted = ctx.ports.hypervisor, ctx.plan.twin_name, settings.autostart

    def carry(_: dict[str, Any]) -> dict[str, Any]:
        if wanted is None:
            return AutostartCarried(autostart=None).model_dump()
        if require_ours(ctx, twin, "set the autostart of") is None:
            raise UnsafeOperation(f"{twin}, the new prod, is gone", hint="check `virsh list --all`")
        was = hv.autostart(twin)
        if was != wanted:
            hv.set_autostart(twin, wanted)
        return AutostartCarried(autostart=wanted, was=was).model_dump()

    def carried(_: dict[str, Any]) -> dict[str, Any] | None:
        if wanted is None or (require_ours(ctx, twin, "read the autostart of") is not None and hv.autostart(twin) == wanted):
            return AutostartCarried(autostart=wanted, probed=True).model_dump()
        return None

    what = "on" if wanted else "off"
    title = f"autostart {what} for {twin}, as {ctx.plan.source.domain} had" if wanted is not None else f"leave {twin}'s autostart"
    return AutostartCarried.model_validate(ctx.once(AUTOSTART_KEY, title, carry, carried))
