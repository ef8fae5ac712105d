"""The client hold on libvirt (issue 14): an nwfilter on prod's NIC drops new inbound TCP
connections (a SYN without ACK/RST/FIN) to the held ports, so during the cutover clients
retransmit their SYN instead of being refused; established connections pass and drain.

- `define_client_hold` defines the filter `upgrader-hold-<run>` (one `tcp` drop rule per port,
  direction `in`; never `reject`: a reject is the refusal the hold removes; IPv4 only, see
  hold_filter_xml).
- `hold_clients` / `release_clients` change the running domain's NIC with `updateDeviceFlags`
  and VIR_DOMAIN_AFFECT_LIVE only: a restarted VM comes back unheld (fail-open), and libvirt
  removes the rules when the domain stops.
- `client_holds` trusts a hold only when both the live XML has the `<filterref>` and libvirt has
  the nwfilter binding for that NIC's tap (the rules are instantiated).

The hypervisor host needs the `iptables` package (iptables/ip6tables/ebtables, nft variants):
libvirt's nwfilter driver runs them (in libvirtd's network namespace). See docs/lab.md.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import libvirt

from upgrader.adapters.libvirt_common import esc
from upgrader.errors import InfraError
from upgrader.ports import HOLD_PREFIX

# TCP flags of a connection's first packet: SYN set, ACK/RST/FIN clear (libvirt's mask/flags)
SYN_ONLY = "SYN,ACK,RST,FIN/SYN"
RULE_PRIORITY = 100

# libvirt 9.0 looks the tools up when it applies rules: a running libvirtd uses them as soon as
# they are installed (checked in the lab); older ones probed them when libvirtd started
TOOLS_HINT = ("install iptables on the hypervisor host (it brings iptables, ip6tables and ebtables, nft variants); "
              "libvirt >= 9.0 uses them at once, an older libvirtd only after a restart")
OWN_FILTER_HINT = ("the NIC has its own nwfilter (filterref): upgrader does not stack its hold on it; "
                   "set takeover.hold: [] for this plan")
NWFILTER_HINT = "see libvirtd's log; `virsh nwfilter-list` and `virsh nwfilter-binding-list` show the filters"


def hold_filter_xml(name: str, ports: Sequence[int], uuid: str | None = None) -> str:
    """The nwfilter of a client hold: for each port (sorted, once) a drop rule for TCP over IPv4,
    inbound, new connections only (`--tcp-flags FIN,SYN,RST,ACK SYN -j DROP` on the tap).

    No `tcp-ipv6` rule: libvirt's tcp-ipv6 has no `flags` attribute (formatnwfilter: TCP/UDP/SCTP
    over IPv6) and 9.0 silently drops it, so the rule became `ip6tables -p tcp --dport 25 -j DROP`
    (plus `--sport 25 -j DROP` from the VM): every packet of an established IPv6 connection was
    dropped instead of draining (seen in the lab). IPv6 clients are therefore not held: they meet
    the window as before (refused, then the new prod).

    `uuid`: the defined filter's, when redefining it (libvirt refuses a filter of an existing name
    without its UUID: "already exists with uuid ...")."""
    wanted = sorted({int(p) for p in ports})
    if not wanted:
        raise ValueError("a client hold needs at least one port")
    bad = [p for p in wanted if not 0 < p < 65536]
    if bad:
        raise ValueError(f"not a TCP port: {bad[0]}")
    lines = [f"<filter name='{esc(name)}' chain='root'>"] + ([f"  <uuid>{esc(uuid)}</uuid>"] if uuid else [])
    for port in wanted:
        lines += [f"  <rule action='drop' direction='in' priority='{RULE_PRIORITY}'>",
                  f"    <tcp dstportstart='{port}' flags='{SYN_ONLY}'/>",
                  "  </rule>"]
    lines.append("</filter>")
    return "\n".join(lines) + "\n"


def nic(root: ET.Element, mac: str) -> ET.Element | None:
    """The domain XML's <interface> with MAC `mac` (any case), or None."""
    for iface in root.findall("./devices/interface"):
        node = iface.find("mac")
        if node is not None and node.get("address", "").lower() == mac.lower():
            return iface
    return None


def filter_of(iface: ET.Element) -> str | None:
    ref = iface.find("filterref")
    return None if ref is None else ref.get("filter")


def with_hold(iface: ET.Element, name: str) -> str:
    """The interface XML with <filterref filter=name/> (the NIC has none)."""
    ET.SubElement(iface, "filterref", {"filter": name})
    return ET.tostring(iface, encoding="unicode")


def without_hold(iface: ET.Element) -> str | None:
    """The interface XML without its hold filterref; None if it carries no upgrader-hold-* one."""
    ref = iface.find("filterref")
    if ref is None or not ref.get("filter", "").startswith(HOLD_PREFIX):
        return None
    iface.remove(ref)
    return ET.tostring(iface, encoding="unicode")


def held_nics(root: ET.Element) -> dict[str, tuple[str, str]]:
    """mac -> (hold filter, target dev) for the live XML's NICs with an upgrader-hold-* filterref."""
    out: dict[str, tuple[str, str]] = {}
    for iface in root.findall("./devices/interface"):
        name, mac, target = filter_of(iface), iface.find("mac"), iface.find("target")
        if name and name.startswith(HOLD_PREFIX) and mac is not None:
            out[mac.get("address", "").lower()] = (name, "" if target is None else target.get("dev", ""))
    return out


@contextmanager
def hold_errors(what: str) -> Iterator[None]:
    """Every libvirt error of a hold is an InfraError; one that names a firewall tool gets the
    install hint (libvirt's nwfilter driver found no iptables/ebtables)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        text = exc.get_error_message() or str(exc)
        # libvirt 9.0 without the tools: "failed to add new filter rules to 'vnet0' - attempting to
        # restore old rules" (the missing binary is only in libvirtd's log)
        tools = any(t in text for t in ("iptables", "ebtables", "firewall", "filter rules", "nwfilter driver"))
        raise InfraError(f"{what}: {text}", hint=TOOLS_HINT if tools else NWFILTER_HINT) from exc


class ClientHoldMixin:
    """The client-hold half of LibvirtHypervisor (ports.Hypervisor's client-hold methods)."""

    if TYPE_CHECKING:
        uri: str

        @property
        def conn(self) -> libvirt.virConnect: ...
        def _lookup(self, name: str) -> libvirt.virDomain | None: ...
        @staticmethod
        def _xml(dom: libvirt.virDomain, inactive: bool = False) -> ET.Element: ...

    def _nwfilter(self, name: str) -> libvirt.virNWFilter | None:
        try:
            return self.conn.nwfilterLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
                return None
            with hold_errors(f"looking up nwfilter {name}"):
                raise

    def _running(self, domain: str) -> libvirt.virDomain | None:
        dom = self._lookup(domain)
        with hold_errors(f"state of {domain}"):
            return dom if dom is not None and dom.isActive() else None

    def define_client_hold(self, name: str, ports: Sequence[int]) -> None:
        existing = self._nwfilter(name)
        xml = hold_filter_xml(name, ports, None if existing is None else existing.UUIDString())
        with hold_errors(f"defining nwfilter {name}"):
            self.conn.nwfilterDefineXML(xml)

    def hold_clients(self, domain: str, mac: str, name: str) -> None:
        dom = self._running(domain)
        if dom is None:
            raise InfraError(f"cannot hold clients of {domain}: the domain is not running at {self.uri}",
                             hint="a hold is live only: it is meaningless on a stopped VM")
        iface = nic(self._xml(dom), mac)
        if iface is None:
            raise InfraError(f"cannot hold clients of {domain}: it has no NIC {mac}",
                             hint=f"`virsh domiflist {domain}` lists its NICs")
        current = filter_of(iface)
        if current == name:
            return
        if current is not None:
            raise InfraError(f"{domain}'s NIC {mac} already has the nwfilter {current}", hint=OWN_FILTER_HINT)
        if self._nwfilter(name) is None:
            raise InfraError(f"nwfilter {name} is not defined at {self.uri}", hint="define_client_hold first")
        with hold_errors(f"holding clients of {domain} (nwfilter {name} on NIC {mac})"):
            dom.updateDeviceFlags(with_hold(iface, name), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def release_clients(self, domain: str, mac: str) -> None:
        dom = self._running(domain)
        if dom is None:
            return
        iface = nic(self._xml(dom), mac)
        xml = None if iface is None else without_hold(iface)
        if xml is None:
            return
        try:
            dom.updateDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            if self._running(domain) is None:
                return  # it stopped meanwhile: libvirt tore the rules down with it
            with hold_errors(f"releasing the clients of {domain} (NIC {mac})"):
                raise

    def undefine_client_hold(self, name: str) -> None:
        nwfilter = self._nwfilter(name)
        if nwfilter is None:
            return
        try:
            nwfilter.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
                return
            raise InfraError(f"undefining nwfilter {name}: {exc.get_error_message() or exc}",
                             hint="a filter still referenced by a NIC cannot go: release the hold on every NIC first"
                             ) from exc

    def client_holds(self, domain: str) -> dict[str, str]:
        dom = self._running(domain)
        if dom is None:
            return {}
        held = held_nics(self._xml(dom))
        if not held:
            return {}
        with hold_errors("listing nwfilter bindings"):
            bindings = {(b.portDev(), b.filterName()) for b in self.conn.listAllNWFilterBindings()}
        return {mac: name for mac, (name, dev) in held.items() if (dev, name) in bindings}

    def client_hold_filters(self) -> list[str]:
        with hold_errors("listing nwfilters"):
            return sorted(n for n in (f.name() for f in self.conn.listAllNWFilters()) if n.startswith(HOLD_PREFIX))
