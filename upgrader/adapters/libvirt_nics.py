"""The libvirt adapter's NIC placement: link state, moving a NIC to another network/bridge, and
the placement in the persistent definition. A mixin of LibvirtHypervisor.

A change goes to the live domain, its persistent definition, or both (ports.NicScope). The
cutover changes only the live domain inside the downtime window (one updateDeviceFlags per NIC)
and writes the persistent side once the service is back (`cutover.persist_nics`): until then a
destroy + start would bring the domain back where its definition says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Callable

import libvirt

from upgrader.adapters.libvirt_common import libvirt_errors
from upgrader.errors import StepFailed
from upgrader.ports import NicPlacement, NicScope


class LibvirtNicsMixin:
    if TYPE_CHECKING:  # provided by LibvirtHypervisor
        @property
        def conn(self) -> libvirt.virConnect: ...

        def _lookup(self, name: str) -> libvirt.virDomain | None: ...

        def _dom(self, name: str) -> libvirt.virDomain: ...

        @staticmethod
        def _xml(dom: libvirt.virDomain, inactive: bool = False) -> ET.Element: ...

    def _update_interface(self, domain: str, mac: str, change: Callable[[ET.Element], None],
                          scope: NicScope) -> bool:
        """Apply `change` to NIC `mac` in the definitions `scope` names; True if the live
        domain was changed."""
        dom = self._dom(domain)
        with libvirt_errors(f"state of {domain}"):
            live = bool(dom.isActive())
        if not live:
            definitions: tuple[bool, ...] = (True,)  # only the persistent definition exists
        else:
            definitions = {NicScope.BOTH: (False, True), NicScope.LIVE: (False,), NicScope.CONFIG: (True,)}[scope]
        for inactive in definitions:
            iface = _interface(self._xml(dom, inactive=inactive), mac)
            if iface is None:
                raise StepFailed(f"{domain} has no NIC {mac}")
            change(iface)
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if inactive else libvirt.VIR_DOMAIN_AFFECT_LIVE
            with libvirt_errors(f"updating {domain}'s NIC {mac}"):
                dom.updateDeviceFlags(ET.tostring(iface, encoding="unicode"), flags)
        return False in definitions

    def set_link(self, domain: str, mac: str, up: bool, scope: NicScope = NicScope.BOTH) -> None:
        def change(iface: ET.Element) -> None:
            link = iface.find("link")
            if link is None:
                link = ET.SubElement(iface, "link")
            link.set("state", "up" if up else "down")

        if self._update_interface(domain, mac, change, scope) and up:
            self._announce(domain)

    def move_nic(self, domain: str, mac: str, network: str, scope: NicScope = NicScope.BOTH) -> None:
        kind = "network" if self._is_network(network) else "bridge"
        if self._update_interface(domain, mac, lambda iface: retarget(iface, kind, network), scope):
            self._announce(domain)

    def persistent_nics(self, domain: str) -> NicPlacement | None:
        dom = self._lookup(domain)
        return None if dom is None else placement(self._xml(dom, inactive=True))

    def _is_network(self, name: str) -> bool:
        try:
            self.conn.networkLookupByName(name)
            return True
        except libvirt.libvirtError:
            return False

    def _announce(self, domain: str) -> None:
        """Make the moved NIC announce itself (RARP/GARP) so switches and bridges learn its new
        port at once instead of when their MAC table ages out. QEMU only; best effort."""
        try:
            import libvirt_qemu

            libvirt_qemu.qemuMonitorCommand(self._dom(domain), '{"execute":"announce-self","arguments":'
                                            '{"initial":50,"max":550,"rounds":5,"step":100}}', 0)
        except (ImportError, libvirt.libvirtError):
            pass


def placement(root: ET.Element) -> NicPlacement:
    """The NICs of a domain XML: mac -> network/bridge, mac -> link up (no <link>: up)."""
    nics: dict[str, str] = {}
    links: dict[str, bool] = {}
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        source = iface.find("source")
        if mac is None or source is None:
            continue
        address = mac.get("address", "").lower()
        nics[address] = source.get("bridge") or source.get("network") or ""
        link = iface.find("link")
        links[address] = link is None or link.get("state", "up") == "up"
    return NicPlacement(nics, links)


def _interface(root: ET.Element, mac: str) -> ET.Element | None:
    for iface in root.findall("./devices/interface"):
        node = iface.find("mac")
        if node is not None and node.get("address", "").lower() == mac.lower():
            return iface
    return None


def retarget(iface: ET.Element, kind: str, name: str) -> None:
    iface.set("type", kind)
    source = iface.find("source")
    if source is None:
        source = ET.SubElement(iface, "source")
    source.attrib.clear()
    source.set(kind, name)
