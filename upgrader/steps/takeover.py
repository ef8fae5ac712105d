"""Network takeover and give-back. The old VM's NICs on the production segment go link-down and
the twin's matching NICs move onto it (the hypervisor makes the moved NIC announce itself);
give-back is the mirror. Both are probed by reading the NIC placement from the hypervisor.

  mac_move  the twin has prod's MACs (and IPs inside): switches and clients see the same MAC on
            a new port.
  ip_move   the twin has MACs of its own (`twin_mac`, fixed at clone time): after the move the
            machine now on the segment (the twin; the old VM on give-back) configures the service
            address if it lacks it and sends gratuitous ARPs so clients re-learn the MAC."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from upgrader.errors import StepFailed
from upgrader.ports import NicScope
from upgrader.steps import guest
from upgrader.steps.base import StepContext
from upgrader.steps.identity import is_ours

if TYPE_CHECKING:
    from upgrader.plan import Plan


def twin_mac(plan: "Plan", mac: str) -> str:
    """The twin's MAC for prod's NIC `mac`: the same under mac_move; under ip_move a stable,
    locally administered one derived from the twin's name (so a re-run derives the same)."""
    if plan.takeover.strategy == "mac_move":
        return mac
    digest = hashlib.sha256(f"{plan.twin_name}/{mac}".encode()).digest()
    derived = "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
    return derived if derived != mac.lower() else "52:54:01:" + derived[9:]


def _placement(ctx: StepContext, *, need_twin: bool = True
               ) -> tuple[dict[str, str], dict[str, bool], dict[str, str], list[tuple[str, str]]]:
    """(old VM's NICs, its links, the twin's NICs, [(old MAC, twin MAC)] on the production net).
    Give-back works without the twin (gone, or a domain of its name that is not this run's):
    its NICs are then {} and only the old VM's links come up."""
    hv, plan = ctx.ports.hypervisor, ctx.plan
    old, twin = hv.domain(plan.source.domain), hv.domain(plan.twin_name)
    if twin is not None and not is_ours(ctx, plan.twin_name, twin):
        twin = None
    if old is None or (twin is None and need_twin):
        raise StepFailed(f"takeover needs both {plan.source.domain} and {plan.twin_name} (this run's) defined")
    prod_net = plan.takeover.production_network
    pairs = sorted((m, twin_mac(plan, m)) for m, net in old.nics.items() if net == prod_net)
    return old.nics, old.links, twin.nics if twin else {}, pairs


def taken_over(ctx: StepContext) -> bool:
    _, old_links, twin_nics, pairs = _placement(ctx)
    prod_net = ctx.plan.takeover.production_network
    return bool(pairs) and all(twin_nics.get(t) == prod_net and not old_links.get(m, True) for m, t in pairs)


def given_back(ctx: StepContext) -> bool:
    _, old_links, twin_nics, pairs = _placement(ctx, need_twin=False)
    prod_net = ctx.plan.takeover.production_network
    return all(twin_nics.get(t) != prod_net and old_links.get(m, False) for m, t in pairs)


def takeover(ctx: StepContext, *, live_only: bool = False) -> dict[str, Any]:
    """Each move is skipped when already in place, so a re-run after a crash repeats nothing.
    `live_only`: the running domains only (the persistent side: `persist`)."""
    hv, plan = ctx.ports.hypervisor, ctx.plan
    _, old_links, twin_nics, pairs = _placement(ctx)
    prod_net = plan.takeover.production_network
    if not pairs:
        raise StepFailed(f"{plan.source.domain} has no NIC on {prod_net}", hint="check takeover.production_network")
    missing = [t for _, t in pairs if t not in twin_nics]
    if missing:
        raise StepFailed(f"{plan.twin_name} has no NIC {', '.join(missing)}",
                         hint="the twin was cloned under another takeover strategy; abort and start again")
    scope = NicScope.LIVE if live_only else NicScope.BOTH
    for mac, _ in pairs:  # the old VM leaves the segment first: never two NICs with one MAC/IP on it
        if old_links.get(mac, True):
            hv.set_link(plan.source.domain, mac, False, scope)
    for _, mac in pairs:
        if twin_nics.get(mac) != prod_net:
            hv.move_nic(plan.twin_name, mac, prod_net, scope)
    ctx.ports.shells.reset()  # "prod" is the twin from now on
    return {"strategy": plan.takeover.strategy, "macs": [t for _, t in pairs]}


def _persisted(ctx: StepContext) -> tuple[list[str], list[str]]:
    """(old VM's MACs still linked up, twin's MACs not on the production net) in the domains'
    persistent definitions: what `persist` has left to write."""
    hv, plan = ctx.ports.hypervisor, ctx.plan
    _, _, _, pairs = _placement(ctx)
    old, twin = hv.persistent_nics(plan.source.domain), hv.persistent_nics(plan.twin_name)
    if old is None or twin is None:
        raise StepFailed(f"persisting the takeover needs both {plan.source.domain} and {plan.twin_name} defined")
    prod_net = plan.takeover.production_network
    return ([m for m, _ in pairs if old.links.get(m, True)],
            [t for _, t in pairs if twin.nics.get(t) != prod_net])


def persist(ctx: StepContext, key: str) -> dict[str, Any]:
    """After a LIVE-only takeover: write the taken-over placement into the persistent
    definitions (old VM's links down, the twin's NICs on the production net). Probed by reading
    those definitions, so a crash between the live move and this step is finished on resume."""
    plan = ctx.plan

    def run(_: dict[str, Any]) -> dict[str, Any]:
        if not taken_over(ctx):  # a VM restarted since the window: its definition came back live
            raise StepFailed(f"the takeover no longer holds on the running VMs ({plan.source.domain} linked up or "
                             f"{plan.twin_name} off the production network); not writing it into their definitions",
                             hint="a VM was restarted after the window; `upgrader rollback HOST` gives the network back")
        links, nics = _persisted(ctx)
        for mac in links:
            ctx.ports.hypervisor.set_link(plan.source.domain, mac, False, NicScope.CONFIG)
        for mac in nics:
            ctx.ports.hypervisor.move_nic(plan.twin_name, mac, plan.takeover.production_network, NicScope.CONFIG)
        return {"links": links, "nics": nics}

    def probe(_: dict[str, Any]) -> dict[str, Any] | None:
        return {"probed": True} if _persisted(ctx) == ([], []) else None

    return ctx.once(key, "persist the takeover in both VMs' definitions", run, probe)


def give_back(ctx: StepContext) -> dict[str, Any]:
    hv, plan = ctx.ports.hypervisor, ctx.plan
    _, old_links, twin_nics, pairs = _placement(ctx, need_twin=False)
    prod_net = plan.takeover.production_network
    for _, mac in pairs:  # the twin leaves the segment first
        if twin_nics.get(mac) == prod_net:
            hv.move_nic(plan.twin_name, mac, plan.staging.network)
    for mac, _ in pairs:
        if not old_links.get(mac, False):
            hv.set_link(plan.source.domain, mac, True)
    ctx.ports.shells.reset()  # "prod" is the old VM again, "staging" the twin
    return {"strategy": plan.takeover.strategy, "macs": [m for m, _ in pairs]}


def claim_address(ctx: StepContext, key: str) -> dict[str, Any] | None:
    """ip_move, after the NICs moved: on whatever now answers on the prod path, make sure the
    service address is configured and send gratuitous ARPs for it. Its own `once` without a
    probe: it is idempotent, so a crash around it simply does it again. None under mac_move."""
    t = ctx.plan.takeover
    if t.strategy != "ip_move":
        return None
    assert t.address is not None  # the plan requires it for ip_move

    def claim(_: dict[str, Any]) -> dict[str, Any]:
        command = guest.claim_address(t.address or "", t.interface, t.garp_count)
        result = ctx.ports.shells.connect("prod").run(command, timeout=60)
        if not result.ok:
            raise StepFailed(f"claiming {t.address} on prod exited {result.rc}:\n{result.tail()}",
                             hint="ip_move needs `ip` and `arping` on the guest (Linux); FreeBSD guests: use mac_move")
        lines = result.stdout.strip().splitlines()
        return {"claimed": lines[-1] if lines else t.address, "garps": t.garp_count}

    return ctx.once(key, f"claim {t.address} with gratuitous ARPs", claim)
