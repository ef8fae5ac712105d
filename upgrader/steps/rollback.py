"""rolling_back: give the service back to the old VM.

Every decision is taken once, at the start, and journaled (`rollback.plan`): did the network
actually move (only then can clients have written to the twin), does the new prod answer (only
then can its writes be synced back). A rollback resumed after a crash reads that decision and
never re-checks a precondition its own cleanup has changed since (the twin may be gone by then).

  full rollback      quiesce the new prod, network back, reverse-sync what it accepted since the
                     cutover, start services on the old VM, remove the twin, merge prod's overlay
  network-only       the new prod cannot be reached (or is lost halfway): network and services
                     back to the old VM without the reverse sync; the twin is stopped and kept,
                     disks and all, as evidence and for recovery by hand; said loudly
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from upgrader.errors import InfraError, StepFailed, UpgraderError
from upgrader.events import Notice
from upgrader.notify import Kind
from upgrader.phases import Phase
from upgrader.steps import takeover
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.client_hold import ROLLBACK_RELEASE_KEY, release_if_held
from upgrader.steps.identity import OLD_VM_OFF_HINT, is_ours
from upgrader.steps.notices import tell_about_window
from upgrader.steps.operator_notice import ROLLED_BACK_KEY, rolled_back_event, tell_operator
from upgrader.steps.staging import teardown
from upgrader.steps.sync import run_commands, sweep_sync_keys, sync_once

if TYPE_CHECKING:
    from upgrader.plan import Plan

PLAN_KEY = "rollback.plan"
DEGRADED_KEY = "rollback.degraded"


class RollbackPlan(BaseModel):
    """What the rollback decided when it began (journaled as `rollback.plan`)."""

    moved: bool  # the twin was on the production segment: clients may have written to it
    reachable: bool  # the new prod answered SSH then


def decide(ctx: StepContext) -> dict[str, Any]:
    hv, plan = ctx.ports.hypervisor, ctx.plan
    twin = hv.domain(plan.twin_name)
    # moved: a running twin's live placement tells. The window moves the running VMs only
    # (cutover.persist_nics writes the definitions later), so a twin that stopped before that reads
    # as "on staging" from its definition although it may have served, and taken mail, on prod:
    # once the takeover began, a stopped twin counts as moved and is kept, never torn down.
    moved = twin is not None and is_ours(ctx, plan.twin_name, twin) and (
        any(net == plan.takeover.production_network for net in twin.nics.values())
        or (not twin.running and "cutover.takeover" in ctx.journal.begun))
    reachable = False
    if moved:
        try:
            ctx.ports.shells.connect("prod").boot_id()
            reachable = True
        except UpgraderError as exc:
            ctx.emit(Notice(f"the new prod ({plan.twin_name}) does not answer: {exc.message}; "
                            "giving the network back without the reverse sync", "error"))
    return RollbackPlan(moved=moved, reachable=reachable).model_dump()


def twin_answers(ctx: StepContext, role: str) -> bool:
    try:
        ctx.ports.shells.connect(role).boot_id()
        return True
    except UpgraderError:
        return False


def degrade(ctx: StepContext, exc: InfraError, twin_role: str) -> None:
    """A connection failed halfway through a full rollback. Only if the twin itself is lost, go
    on network-only (journaled); if the twin answers, the failure was elsewhere (the old VM): it
    stays the step's failure and `resume` retries - the reverse sync is never given up lightly."""
    if twin_answers(ctx, twin_role):
        raise exc
    why = exc.message
    ctx.emit(Notice(f"the new prod was lost during the rollback ({why}); going on without the reverse sync", "error"))
    ctx.once(DEGRADED_KEY, "go on without the reverse sync", lambda _: {"why": why})


def data_on_twin_only(ctx: StepContext) -> str:
    plan = ctx.plan
    since = ctx.journal.begun.get("cutover.takeover", {}).get("ts")
    paths = ", ".join(p.path for p in plan.sync.paths)
    return (f"data written to {paths} on {plan.twin_name} after the cutover"
            + (f" ({since})" if since else "")
            + f" may exist only on {plan.twin_name}'s disks: it was stopped and kept (not deleted) for recovery by hand; "
            f"{plan.source.domain} stays on its snapshot overlay (the twin's disks depend on its base) and claimed by "
            f"this run; once the data is recovered: `virsh undefine {plan.twin_name} --remove-all-storage`, then "
            f"`virsh metadata {plan.source.domain} urn:x-upgrader:claim:1 --config --remove`")


class RollingBack:
    phase = Phase.ROLLING_BACK

    def describe(self, plan: "Plan") -> list[str]:
        return [
            "decide once: did the network move to the twin, does the new prod answer (journaled)",
            "quiesce the new prod (the twin)",
            f"release the client hold on {plan.source.domain} if one is still on",
            f"network back to {plan.source.domain}",
            "reverse rsync twin -> old VM of everything written since cutover",
            f"resume services on {plan.source.domain}",
            f"destroy {plan.twin_name}, merge {plan.source.domain}'s overlay back",
            f"if the new prod does not answer: network and services back without the reverse sync; "
            f"{plan.twin_name} is stopped and kept with its disks, and the run says so",
        ] + (["tell the operators: rolled back, why, and what to run next"] if plan.operator else [])

    def run(self, ctx: StepContext) -> Outcome:
        plan, hv = ctx.plan, ctx.ports.hypervisor
        if PLAN_KEY not in ctx.journal.done:
            old = hv.domain(plan.source.domain)
            if old is not None and not old.running:  # an automatic rollback: nothing done yet, resume retries
                raise StepFailed(f"cannot give the service back: the old VM {plan.source.domain} is not running",
                                 hint=OLD_VM_OFF_HINT.format(old=plan.source.domain, host=ctx.record.host)
                                 .replace("`upgrader rollback", "`upgrader resume"))
        decision = RollbackPlan.model_validate(ctx.once(PLAN_KEY, "decide how to roll back", lambda _: decide(ctx)))

        def full() -> bool:
            return decision.moved and decision.reachable and DEGRADED_KEY not in ctx.journal.done

        if full():
            try:
                run_commands(ctx, "rollback.quiesce_new", "prod", list(plan.sync.quiesce), "quiesce")
            except InfraError as exc:  # includes a connection lost for good
                degrade(ctx, exc, "prod")
        release_if_held(ctx, ROLLBACK_RELEASE_KEY)  # the old VM never comes back linked up and held
        ctx.once(
            "rollback.network",
            f"network back to {plan.source.domain}",
            lambda _: takeover.give_back(ctx),
            lambda _: {"probed": True} if takeover.given_back(ctx) else None,
        )
        takeover.claim_address(ctx, "rollback.claim_address")
        stats = None
        if full():
            try:
                stats = sync_once(ctx, "rollback.reverse_sync", "staging", "prod", final=True)
            except InfraError as exc:
                degrade(ctx, exc, "staging")
        run_commands(ctx, "rollback.resume_old", "prod", list(plan.sync.resume), "resume services")
        out: dict[str, Any] = {"reverse_sync": stats, "moved": decision.moved}
        if decision.moved and not full():
            warning = data_on_twin_only(ctx)
            if warning not in ctx.record.warnings:
                ctx.record.warnings.append(warning)
            ctx.emit(Notice(warning, "error"))
            sweep_sync_keys(ctx, ("prod",))  # the old VM; the twin is kept as it is
            ctx.once("rollback.keep_twin", f"stop {plan.twin_name} and keep it", lambda _: self._keep_twin(ctx))
            out["kept"] = plan.twin_name  # the claim stays: the source is still on the run's overlay
        else:
            out["cleanup"] = teardown(ctx, "rollback")
        reason = ctx.record.error.message if ctx.record.error else None
        tell_about_window(ctx, Kind.ROLLED_BACK, "notice.rolled_back", reason)
        tell_operator(ctx, ROLLED_BACK_KEY, rolled_back_event(ctx.record, state_dir=ctx.state_dir))
        return Outcome(out, trigger="rolled_back")

    @staticmethod
    def _keep_twin(ctx: StepContext) -> dict[str, Any]:
        hv, twin = ctx.ports.hypervisor, ctx.plan.twin_name
        info = hv.domain(twin)
        if info is not None and is_ours(ctx, twin, info) and info.running:
            hv.destroy(twin)
        return {"kept": twin}
