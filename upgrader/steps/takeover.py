"""Network takeover and give-back (MAC move): the old VM's NICs go link-down on the production
segment and the twin's NICs (same MACs, same IPs inside) move onto it; give-back is the mirror.
Both are probed by reading the domains' NIC placement from the hypervisor."""

from __future__ import annotations

from typing import Any

from upgrader.errors import StepFailed
from upgrader.steps.base import StepContext


def _placement(ctx: StepContext) -> tuple[dict[str, str], dict[str, bool], dict[str, str]]:
    hv, plan = ctx.ports.hypervisor, ctx.plan
    old, twin = hv.domain(plan.source.domain), hv.domain(plan.twin_name)
    if old is None or twin is None:
        raise StepFailed(f"takeover needs both {plan.source.domain} and {plan.twin_name} defined")
    return old.nics, old.links, twin.nics


def taken_over(ctx: StepContext) -> bool:
    old_nics, old_links, twin_nics = _placement(ctx)
    prod_net = ctx.plan.takeover.production_network
    macs = [m for m, net in old_nics.items() if net == prod_net]
    return bool(macs) and all(twin_nics.get(m) == prod_net and not old_links.get(m, True) for m in macs)


def given_back(ctx: StepContext) -> bool:
    old_nics, old_links, twin_nics = _placement(ctx)
    prod_net = ctx.plan.takeover.production_network
    macs = [m for m, net in old_nics.items() if net == prod_net]
    return all(twin_nics.get(m) != prod_net and old_links.get(m, False) for m in macs)


def takeover(ctx: StepContext) -> dict[str, Any]:
    """Each move is skipped when already in place, so a re-run after a crash repeats nothing."""
    hv, plan = ctx.ports.hypervisor, ctx.plan
    old_nics, old_links, twin_nics = _placement(ctx)
    prod_net = plan.takeover.production_network
    macs = sorted(m for m, net in old_nics.items() if net == prod_net)
    if not macs:
        raise StepFailed(f"{plan.source.domain} has no NIC on {prod_net}", hint="check takeover.production_network")
    for mac in macs:  # the old VM leaves the segment first: never two NICs with one MAC on it
        if old_links.get(mac, True):
            hv.set_link(plan.source.domain, mac, False)
    for mac in macs:
        if twin_nics.get(mac) != prod_net:
            hv.move_nic(plan.twin_name, mac, prod_net)
    ctx.ports.shells.reset()  # "prod" is the twin from now on
    return {"strategy": "mac_move", "macs": macs}


def give_back(ctx: StepContext) -> dict[str, Any]:
    hv, plan = ctx.ports.hypervisor, ctx.plan
    old_nics, old_links, twin_nics = _placement(ctx)
    prod_net = plan.takeover.production_network
    macs = sorted(m for m, net in old_nics.items() if net == prod_net)
    for mac in macs:  # the twin leaves the segment first
        if twin_nics.get(mac) == prod_net:
            hv.move_nic(plan.twin_name, mac, plan.staging.network)
    for mac in macs:
        if not old_links.get(mac, False):
            hv.set_link(plan.source.domain, mac, True)
    ctx.ports.shells.reset()  # "prod" is the old VM again, "staging" the twin
    return {"strategy": "mac_move", "macs": macs}
