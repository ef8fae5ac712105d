"""The client hold: from just before the quiesce until the new prod answers, new TCP connections to
the plan's ports (plan_hold.hold_ports) are dropped on the hypervisor (a libvirt nwfilter on the
old VM's production NICs, LIVE only), so clients retransmit their SYN (Linux: at +1 s) instead of
being refused. Established connections pass and drain. "hold" alone means a held run
(Phase.HELD); this is the *client* hold.

  hold_clients(ctx)             `cutover.hold_clients`: define the run's filter, then hold every
                                production NIC of the old VM; probe: all of them held by it
  release_clients(ctx, key)     `KEY` (cutover.release_clients, rollback.release_clients): release
                                every NIC of the old VM, undefine the filter; probe: no NIC held
                                by it and the filter gone. Nothing when no hold ever began.
  release_if_held(ctx, key)     every way out (rollback, teardown): release if a hold began and no
                                release finished (as sweep_sync_keys does for sync keys)

The hold fails open: when it cannot be set up (a NIC with a filter of its own, no iptables on the
hypervisor, a NIC type nwfilter does not cover), whatever got held is released again, a warning
says why, and the cutover goes on without it — clients are refused for the window as they were
before the hold existed. A hold is a refinement of the cutover, never a reason to roll an upgrade
back.

A hold off (`takeover.hold: []`, or no port to hold) does nothing at all: no filter, no journal
entry. The filter is named after the run (ports.client_hold_name), so a release never touches
another run's hold or a NIC's own filter.
"""

from __future__ import annotations

import time
from typing import Any

from upgrader.errors import InfraError, StepFailed
from upgrader.events import Notice
from upgrader.ports import client_hold_name
from upgrader.plan_hold import hold_ports
from upgrader.steps.base import Journal, Outputs, StepContext

HOLD_KEY = "cutover.hold_clients"
CUTOVER_RELEASE_KEY = "cutover.release_clients"
ROLLBACK_RELEASE_KEY = "rollback.release_clients"
RELEASE_SUFFIX = ".release_clients"  # every release key (cutover., rollback., abort.) ends so


def production_nics(ctx: StepContext) -> list[str]:
    """The old VM's NICs on the production network, sorted ([] if it is not defined)."""
    info = ctx.ports.hypervisor.domain(ctx.plan.source.domain)
    if info is None:
        return []
    return sorted(mac for mac, net in info.nics.items() if net == ctx.plan.takeover.production_network)


def hold_clients(ctx: StepContext) -> Outputs | None:
    """Hold new connections to prod (see module doc); None when the plan holds no port."""
    ports = hold_ports(ctx.plan)
    if not ports:
        return None
    hv, domain, name = ctx.ports.hypervisor, ctx.plan.source.domain, client_hold_name(ctx.run_id)

    def run(_: dict[str, Any]) -> Outputs:
        macs = production_nics(ctx)
        if not macs:
            raise StepFailed(f"{domain} has no NIC on {ctx.plan.takeover.production_network} to hold clients on",
                             hint="check takeover.production_network")
        started = time.monotonic()
        try:
            hv.define_client_hold(name, ports)
            for mac in macs:
                hv.hold_clients(domain, mac, name)
        except InfraError as exc:
            undone = _undo_failed_hold(ctx, macs, name)
            ctx.emit(Notice(f"clients are not held during this cutover: {exc.message}"
                            + (f" ({exc.hint})" if exc.hint else "") + "; going on without the hold: new "
                            "connections are refused in the window, as without takeover.hold" + undone, "warning"))
            return {"filter": None, "ports": list(ports), "macs": [], "skipped": exc.message,
                    "seconds": round(time.monotonic() - started, 3)}
        return {"filter": name, "ports": list(ports), "macs": macs, "seconds": round(time.monotonic() - started, 3)}

    def held_now(_: dict[str, Any]) -> Outputs | None:
        macs = production_nics(ctx)
        held = hv.client_holds(domain)
        if macs and all(held.get(mac) == name for mac in macs):
            return {"filter": name, "ports": list(ports), "macs": macs, "probed": True}
        return None  # a NIC not held, or its rules not instantiated: hold again (idempotent)

    return ctx.once(HOLD_KEY, f"hold new connections to {domain}:{', '.join(map(str, ports))}", run, held_now,
                    lambda: {"domain": domain, "ports": list(ports)})


def _undo_failed_hold(ctx: StepContext, macs: list[str], name: str) -> str:
    """Best effort after a hold that failed halfway: release what got held, drop the filter.
    Returns "" or a note of what is still to undo (the release steps try again later)."""
    hv, domain = ctx.ports.hypervisor, ctx.plan.source.domain
    try:
        for mac in macs:
            hv.release_clients(domain, mac)
        hv.undefine_client_hold(name)
    except InfraError as exc:
        return f"; undoing it failed too ({exc.message}): it is released again after the cutover"
    return ""


def release_clients(ctx: StepContext, key: str) -> Outputs | None:
    """Release the run's hold as `once` `key`; None when no hold ever began."""
    if HOLD_KEY not in ctx.journal.begun:
        return None
    hv, domain, name = ctx.ports.hypervisor, ctx.plan.source.domain, client_hold_name(ctx.run_id)

    def run(_: dict[str, Any]) -> Outputs:
        info = hv.domain(domain)
        released = [mac for mac, held in hv.client_holds(domain).items() if held == name]
        for mac in sorted(info.nics) if info is not None else []:  # any NIC: a half-instantiated one too
            hv.release_clients(domain, mac)
        hv.undefine_client_hold(name)
        return {"filter": name, "released": released}

    def released_now(_: dict[str, Any]) -> Outputs | None:
        if name in hv.client_holds(domain).values() or name in hv.client_hold_filters():
            return None
        return {"filter": name, "probed": True}

    return ctx.once(key, f"release the client hold on {domain}", run, released_now)


def hold_in_doubt(journal: Journal) -> bool:
    """A hold began and no release finished: new connections to prod may still be dropped."""
    return HOLD_KEY in journal.begun and not any(key.endswith(RELEASE_SUFFIX) for key in journal.done)


def release_if_held(ctx: StepContext, key: str) -> Outputs | None:
    """On a way out: release the hold if one may still be on (see hold_in_doubt)."""
    if not hold_in_doubt(ctx.journal) and key not in ctx.journal.begun:
        return None
    return release_clients(ctx, key)


def held_clients(journal: Journal) -> str | None:
    """For `upgrader status`: "mailhost:25, 143" while a hold is in doubt, else None."""
    if not hold_in_doubt(journal):
        return None
    begin = journal.begun[HOLD_KEY]
    ports = ", ".join(str(p) for p in begin.get("ports") or [])
    return f"{begin.get('domain', '?')}:{ports or '?'}"
