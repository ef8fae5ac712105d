"""The client hold on the fake hypervisor (ports.Hypervisor's client-hold methods), strict like
libvirt's nwfilter:

  world["nwfilters"]     name -> [ports]       defined filters (any name: a site's own too)
  world["client_holds"]  domain -> {mac: name}  the live <filterref> on a running domain's NIC,
                          its rules instantiated. A name without HOLD_PREFIX is a NIC's own
                          filter (clean-traffic, ...): a hold on that NIC is refused.

Like libvirt: a hold is LIVE only, so stopping the domain drops it (FakeHypervisor.destroy);
holding a NIC of a domain that is not running, an unknown MAC, a NIC with another filter or
an undefined filter raises InfraError; undefining a filter still referenced raises. Every
change is an effect (define_client_hold, hold_clients, release_clients, undefine_client_hold),
a call that changes nothing is none (so a test counts real changes). Pause points:
`after:define_client_hold`, `after:hold_clients:DOMAIN`, `after:release_clients:DOMAIN`,
`after:undefine_client_hold`.
"""

from __future__ import annotations

from typing import Sequence

from upgrader.errors import InfraError
from upgrader.ports import HOLD_PREFIX
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import World, WorldFile, domain_of, effect

OWN_FILTER_HINT = ("the NIC has its own nwfilter (filterref): upgrader does not stack its hold on it; "
                   "set takeover.hold: [] for this plan")


def _answering(world: World) -> World:
    if "libvirt" in world["faults"]:
        raise InfraError("fake: cannot connect to libvirt (fault)", hint="is libvirtd running and the URI right?")
    return world


class FakeClientHold:
    """The client-hold half of FakeHypervisor."""

    world: WorldFile

    def define_client_hold(self, name: str, ports: Sequence[int]) -> None:
        if not ports:
            raise ValueError("fake: a client hold needs at least one port")
        with self.world.change() as world:
            _answering(world)
            filters = world.setdefault("nwfilters", {})
            wanted = sorted(int(p) for p in ports)
            if filters.get(name) != wanted:
                filters[name] = wanted
                effect(world, "define_client_hold", name=name, ports=wanted)
        maybe_pause("after:define_client_hold")

    def hold_clients(self, domain: str, mac: str, name: str) -> None:
        changed = False
        with self.world.change() as world:
            dom = domain_of(_answering(world), domain)
            if not dom["running"]:
                raise InfraError(f"fake: cannot hold clients of {domain}: the domain is not running",
                                 hint="a hold is live only: it is meaningless on a stopped VM")
            if mac not in dom["nics"]:
                raise InfraError(f"fake: {domain} has no NIC {mac}")
            held = world.setdefault("client_holds", {}).setdefault(domain, {})
            if held.get(mac) not in (None, name):  # like the adapter: this before the filter's existence
                raise InfraError(f"fake: {domain}'s NIC {mac} already has the nwfilter {held[mac]}", hint=OWN_FILTER_HINT)
            if held.get(mac) is None and name not in world.get("nwfilters", {}):
                raise InfraError(f"fake: nwfilter {name} is not defined", hint="define_client_hold first")
            if held.get(mac) != name:
                held[mac] = name
                effect(world, "hold_clients", domain=domain, mac=mac, name=name)
                changed = True
        if changed:
            maybe_pause(f"after:hold_clients:{domain}")

    def release_clients(self, domain: str, mac: str) -> None:
        changed = False
        with self.world.change() as world:
            dom = _answering(world)["domains"].get(domain)
            held = world.get("client_holds", {}).get(domain, {})
            if dom is not None and dom["running"] and str(held.get(mac, "")).startswith(HOLD_PREFIX):
                effect(world, "release_clients", domain=domain, mac=mac, name=held.pop(mac))
                if not held:
                    del world["client_holds"][domain]
                changed = True
        if changed:
            maybe_pause(f"after:release_clients:{domain}")

    def undefine_client_hold(self, name: str) -> None:
        with self.world.change() as world:
            filters = _answering(world).get("nwfilters", {})
            if name not in filters:
                return
            users = sorted(d for d, nics in world.get("client_holds", {}).items() if name in nics.values())
            if users:
                raise InfraError(f"fake: nwfilter {name} is in use by {', '.join(users)}",
                                 hint="release the hold on every NIC first")
            del filters[name]
            effect(world, "undefine_client_hold", name=name)
        maybe_pause("after:undefine_client_hold")

    def client_holds(self, domain: str) -> dict[str, str]:
        world = _answering(self.world.read())
        dom = world["domains"].get(domain)
        if dom is None or not dom["running"]:
            return {}
        return {mac: name for mac, name in world.get("client_holds", {}).get(domain, {}).items()
                if name.startswith(HOLD_PREFIX)}

    def client_hold_filters(self) -> list[str]:
        return sorted(n for n in _answering(self.world.read()).get("nwfilters", {}) if n.startswith(HOLD_PREFIX))


def drop_live_holds(world: World, domain: str) -> None:
    """The domain stopped: libvirt tears its live filterrefs and their rules down with it."""
    world.get("client_holds", {}).pop(domain, None)
