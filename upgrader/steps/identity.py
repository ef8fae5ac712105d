"""The VM is claimed, not the name. A run records its claim on the source domain (libvirt
<metadata>), so any controller - whatever its state dir or the host name it uses - sees it and
names the holder. The twin is cloned from the claimed XML and so carries the same claim.

Nothing is destroyed, undefined, merged or deleted unless its identity matches what this run
recorded: the source's UUID (record.vm), the twin's UUID (clone.define) or, for a twin whose
define was in doubt, the claim it carries."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from upgrader.errors import BusyError, UnsafeOperation
from upgrader.ports import Claim, DomainInfo, Hypervisor

if TYPE_CHECKING:
    from upgrader.steps.base import StepContext

CLAIM_KEY = "claim"
OLD_VM_OFF_HINT = ("nothing was changed; start it (`virsh start {old}`: its link is down, no client reaches it), stop its "
                   "services (the plan's sync.quiesce commands, on its console) so the reverse sync can replace its "
                   "spool, then `upgrader rollback {host}` again")


def make_claim(ctx: "StepContext") -> Claim:
    return Claim(run_id=ctx.run_id, host=ctx.record.host, controller=socket.gethostname(),
                 state_dir=ctx.state_dir, since=ctx.now().isoformat(timespec="seconds"))


def refuse_foreign(hv: Hypervisor, domain: str, run_id: str) -> None:
    """BusyError (exit 3) if `domain` carries another run's claim."""
    claim = hv.claim_of(domain)
    if claim is not None and claim.run_id != run_id:
        raise BusyError(
            f"{domain} is claimed by {claim.holder()}",
            hint=(f"one VM, one run: finish that run there (`upgrader --state-dir {claim.state_dir} status {claim.host}` "
                  f"on {claim.controller}); if it is gone for good, remove the claim by hand: "
                  f"`virsh metadata {domain} urn:x-upgrader:claim:1 --config --remove`"),
        )


def claim_source(ctx: "StepContext") -> dict[str, Any]:
    """Journaled: record this run's claim on the source domain (before any side effect)."""
    hv, domain = ctx.ports.hypervisor, ctx.plan.source.domain

    def claim(_: dict[str, Any]) -> dict[str, Any]:
        info = hv.domain(domain)
        if info is None or not is_ours(ctx, domain, info):
            raise UnsafeOperation(f"{domain} is not the VM this run was started on (its UUID changed)",
                                  hint="nothing was changed; start a new run")
        refuse_foreign(hv, domain, ctx.run_id)
        hv.set_claim(domain, make_claim(ctx))
        refuse_foreign(hv, domain, ctx.run_id)  # read back: another controller may have written at the same time
        return {"domain": domain}

    def claimed(_: dict[str, Any]) -> dict[str, Any] | None:
        found = hv.claim_of(domain)
        return {"domain": domain, "probed": True} if found is not None and found.run_id == ctx.run_id else None

    return ctx.once(CLAIM_KEY, f"claim {domain} for this run", claim, claimed)


def release_claim(ctx: "StepContext", key: str, domain: str) -> dict[str, Any]:
    """Journaled: take this run's claim off `domain` (only ours; a domain that is gone has none)."""
    hv = ctx.ports.hypervisor

    def release(_: dict[str, Any]) -> dict[str, Any]:
        found = hv.claim_of(domain)
        if found is None or found.run_id != ctx.run_id or not is_ours(ctx, domain):
            return {"released": False}
        hv.set_claim(domain, None)
        return {"released": True}

    return ctx.once(key, f"release the claim on {domain}", release)


def twin_uuid(ctx: "StepContext") -> str | None:
    return ctx.journal.done.get("clone.define", {}).get("uuid")


def is_ours(ctx: "StepContext", name: str, info: DomainInfo | None = None) -> bool:
    """Does domain `name` belong to this run? The source by its recorded UUID, the twin by its
    recorded UUID or - if its define was in doubt - by the claim it carries."""
    hv, plan = ctx.ports.hypervisor, ctx.plan
    info = info or hv.domain(name)
    if info is None:
        return False
    if name == plan.source.domain:  # a run from before claims (no recorded identity): by name, as it was
        return ctx.record.vm is None or info.uuid == ctx.record.vm.uuid
    if name == plan.twin_name:
        recorded = twin_uuid(ctx)
        if recorded is not None:
            return info.uuid == recorded
        claim = hv.claim_of(name)
        return claim is not None and claim.run_id == ctx.run_id
    return False


def require_ours(ctx: "StepContext", name: str, action: str) -> DomainInfo | None:
    """The domain if it exists and is this run's; None if it is gone; UnsafeOperation if a
    domain of that name exists that this run did not make or claim."""
    info = ctx.ports.hypervisor.domain(name)
    if info is None:
        return None
    if not is_ours(ctx, name, info):
        raise UnsafeOperation(
            f"not going to {action} {name} (uuid {info.uuid}): it is not the domain this run recorded",
            hint="another run or a person made a domain of that name; nothing was changed - check `virsh dominfo`",
        )
    return info
