"""NIC placement on the fake hypervisor, live and persistent like libvirt (ports.NicScope).

A domain's `nics`/`links` are what `domain()` reports: the live placement of a running domain,
the definition of one that is shut off. While a LIVE-only change makes the two differ, the
persistent definition is kept in the domain's `config` {nics, links} (absent while they agree);
a destroy brings the domain back to it, as libvirt does, so a twin taken over LIVE-only and then
destroyed and started comes back on the staging network.

Effects: `set_link` / `move_nic` {domain, mac, up|network, scope} for a LIVE or BOTH change,
`persist_link` / `persist_nic` for a CONFIG-only one (the cutover's `cutover.persist_nics`), so
a test counts the window's updates apart from the persisting. Pause points:
`after:set_link:DOMAIN`, `after:move_nic:NETWORK`, `after:persist_link:DOMAIN`,
`after:persist_nic:NETWORK`.
"""

from __future__ import annotations

from typing import Any

from upgrader.errors import StepFailed
from upgrader.ports import NicPlacement, NicScope
from upgrader.testing.hooks import maybe_pause
from upgrader.testing.world import WorldFile, domain_of, effect


class FakeNics:
    """The NIC half of FakeHypervisor."""

    world: WorldFile

    def set_link(self, domain: str, mac: str, up: bool, scope: NicScope = NicScope.BOTH) -> None:
        op = self._change(domain, mac, "links", up, scope, "set_link", "persist_link", up=up)
        maybe_pause(f"after:{op}:{domain}")

    def move_nic(self, domain: str, mac: str, network: str, scope: NicScope = NicScope.BOTH) -> None:
        op = self._change(domain, mac, "nics", network, scope, "move_nic", "persist_nic", network=network)
        maybe_pause(f"after:{op}:{network}")

    def persistent_nics(self, domain: str) -> NicPlacement | None:
        dom = self.world.read()["domains"].get(domain)
        if dom is None:
            return None
        config = dom.get("config") or dom
        return NicPlacement(dict(config["nics"]), dict(config["links"]))

    def _change(self, domain: str, mac: str, field: str, value: Any, scope: NicScope, op: str, persist_op: str,
                **fields: Any) -> str:
        scope = NicScope(scope)
        with self.world.change() as world:
            dom = domain_of(world, domain)
            if mac not in dom["nics"]:
                raise StepFailed(f"fake: {domain} has no NIC {mac}")
            if not dom["running"]:
                scope = NicScope.BOTH  # a shut-off domain has only its definition
            config = dom.setdefault("config", {"nics": dict(dom["nics"]), "links": dict(dom["links"])})
            if scope is not NicScope.CONFIG:
                dom[field][mac] = value
            if scope is not NicScope.LIVE:
                config[field][mac] = value
            if config == {"nics": dom["nics"], "links": dom["links"]}:
                del dom["config"]
            name = persist_op if scope is NicScope.CONFIG else op
            effect(world, name, domain=domain, mac=mac, scope=scope.value, **fields)
        return name


def back_to_definition(dom: dict[str, Any]) -> None:
    """A domain that stops keeps only its persistent definition (the fake's destroy)."""
    config = dom.pop("config", None)
    if config is not None:
        dom["nics"], dom["links"] = config["nics"], config["links"]
