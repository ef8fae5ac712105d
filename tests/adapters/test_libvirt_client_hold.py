"""The libvirt client hold's pure parts: the nwfilter XML (golden), the interface XML with and
without the hold's filterref, and which NICs the live XML shows held. The real thing (rules in
the hypervisor's netns, a connect that times out) is tests/lab/test_client_hold_lab.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from upgrader.adapters.libvirt_client_hold import (TOOLS_HINT, ClientHoldMixin, filter_of, held_nics, hold_errors,
                                                   hold_filter_xml, nic, with_hold, without_hold)
from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.errors import InfraError
from upgrader.ports import client_hold_name

GOLDEN = """\
<filter name='upgrader-hold-20261202-a1' chain='root'>
  <rule action='drop' direction='in' priority='100'>
    <tcp dstportstart='25' flags='SYN,ACK,RST,FIN/SYN'/>
  </rule>
  <rule action='drop' direction='in' priority='100'>
    <tcp dstportstart='143' flags='SYN,ACK,RST,FIN/SYN'/>
  </rule>
</filter>
"""

LIVE = """\
<domain type='qemu'><name>mailhost</name><devices>
  <interface type='bridge'>
    <mac address='52:54:00:C0:02:0A'/><source bridge='upgprod0'/><target dev='vnet3'/>
    <model type='virtio'/><alias name='net0'/>
  </interface>
  <interface type='bridge'>
    <mac address='52:54:00:c0:02:0b'/><source bridge='upgprod0'/><target dev='vnet4'/>
    <filterref filter='clean-traffic'><parameter name='IP' value='192.0.2.11'/></filterref>
  </interface>
  <interface type='bridge'>
    <mac address='52:54:00:c0:02:0c'/><source bridge='upgprod0'/><target dev='vnet5'/>
    <filterref filter='upgrader-hold-old'/>
  </interface>
</devices></domain>
"""


def test_filter_xml_is_golden_ports_sorted_once() -> None:
    assert hold_filter_xml(client_hold_name("20261202-a1"), [143, 25, 143]) == GOLDEN


def test_filter_xml_drops_never_rejects_and_parses() -> None:
    root = ET.fromstring(hold_filter_xml("upgrader-hold-x", [25]))
    assert root.get("name") == "upgrader-hold-x" and root.get("chain") == "root"
    rules = root.findall("rule")
    assert [r.get("action") for r in rules] == ["drop"]
    assert [r.get("direction") for r in rules] == ["in"]
    # no tcp-ipv6: libvirt ignores its flags, the rule would cut established IPv6 connections
    assert [r[0].tag for r in rules] == ["tcp"] and rules[0][0].get("flags") == "SYN,ACK,RST,FIN/SYN"


def test_filter_xml_keeps_the_uuid_of_a_redefined_filter() -> None:
    uuid = "7b055646-0a1e-4ed1-b901-35947f3eb799"
    xml = hold_filter_xml("upgrader-hold-x", [25], uuid)
    assert xml.splitlines()[1] == f"  <uuid>{uuid}</uuid>"
    assert ET.fromstring(xml).findtext("uuid") == uuid


def test_filter_xml_escapes_the_name() -> None:
    assert ET.fromstring(hold_filter_xml("upgrader-hold-a'<b", [25])).get("name") == "upgrader-hold-a'<b"


@pytest.mark.parametrize("ports", [[], [0], [65536], [-25]])
def test_filter_xml_refuses_no_or_bad_ports(ports: list[int]) -> None:
    with pytest.raises(ValueError):
        hold_filter_xml("upgrader-hold-x", ports)


def test_with_and_without_hold_round_trip() -> None:
    root = ET.fromstring(LIVE)
    iface = nic(root, "52:54:00:c0:02:0a")  # the live XML's MAC is upper case
    assert iface is not None and filter_of(iface) is None
    held = ET.fromstring(with_hold(iface, "upgrader-hold-r1"))
    assert filter_of(held) == "upgrader-hold-r1"
    assert held.find("target").get("dev") == "vnet3"  # type: ignore[union-attr]
    released = without_hold(held)
    assert released is not None and ET.fromstring(released).find("filterref") is None


def test_without_hold_leaves_a_nics_own_filter() -> None:
    root = ET.fromstring(LIVE)
    own = nic(root, "52:54:00:c0:02:0b")
    plain = nic(root, "52:54:00:c0:02:0a")
    assert own is not None and plain is not None
    assert without_hold(own) is None and filter_of(own) == "clean-traffic"
    assert without_hold(plain) is None
    assert nic(root, "52:54:00:ff:ff:ff") is None


def test_held_nics_only_hold_filters_with_their_tap() -> None:
    assert held_nics(ET.fromstring(LIVE)) == {"52:54:00:c0:02:0c": ("upgrader-hold-old", "vnet5")}


def test_the_adapter_has_the_hold() -> None:
    assert issubclass(LibvirtHypervisor, ClientHoldMixin)
    for method in ("define_client_hold", "hold_clients", "release_clients", "undefine_client_hold",
                   "client_holds", "client_hold_filters"):
        assert callable(getattr(LibvirtHypervisor, method))


def test_rules_that_fail_to_instantiate_get_the_install_hint() -> None:
    # what libvirt 9.0 says when iptables/ebtables are missing where libvirtd runs (seen in the lab)
    libvirt.virResetLastError()
    with pytest.raises(InfraError) as caught:
        with hold_errors("holding clients of mailhost"):
            raise libvirt.libvirtError("operation failed: failed to add new filter rules to 'vnet0' - "
                                       "attempting to restore old rules")
    assert "failed to add new filter rules" in caught.value.message
    assert caught.value.hint == TOOLS_HINT and "install iptables" in TOOLS_HINT
    with pytest.raises(InfraError) as other:
        with hold_errors("listing nwfilters"):
            raise libvirt.libvirtError("internal error: something else")
    assert other.value.hint != TOOLS_HINT
