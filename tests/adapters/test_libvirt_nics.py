"""The libvirt adapter's NIC reading and its connection check, against libvirt's built-in
`test:///default` driver (in process, nothing on the host). That driver cannot update devices;
the LIVE/CONFIG updates themselves are tested on the lab (tests/lab/test_libvirt_nics_lab.py)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest

from upgrader.adapters import libvirt_hypervisor
from upgrader.adapters.libvirt_hypervisor import CONN_FRESH, LibvirtHypervisor
from upgrader.adapters.libvirt_nics import placement
from upgrader.ports import NicPlacement

URI = "test:///default"
MAC = "aa:bb:cc:dd:ee:ff"  # the test driver's domain `test` has this NIC on network `default`


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    adapter = LibvirtHypervisor(URI)
    yield adapter
    adapter.conn.close()


def test_placement_reads_networks_bridges_and_link_states() -> None:
    root = ET.fromstring(
        "<domain><devices>"
        "<interface type='network'><mac address='52:54:00:AA:00:01'/><source network='prod'/></interface>"
        "<interface type='bridge'><mac address='52:54:00:aa:00:02'/><source bridge='br0'/><link state='down'/></interface>"
        "<interface type='bridge'><mac address='52:54:00:aa:00:03'/><source bridge='br1'/><link state='up'/></interface>"
        "<interface type='user'><mac address='52:54:00:aa:00:04'/></interface>"
        "</devices></domain>")
    assert placement(root) == NicPlacement(
        nics={"52:54:00:aa:00:01": "prod", "52:54:00:aa:00:02": "br0", "52:54:00:aa:00:03": "br1"},
        links={"52:54:00:aa:00:01": True, "52:54:00:aa:00:02": False, "52:54:00:aa:00:03": True})


def test_persistent_nics_read_the_definition_and_domain_the_running_domain(hv: LibvirtHypervisor) -> None:
    name = f"upg-nics-{uuid.uuid4().hex[:8]}"
    root = ET.fromstring(hv.conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    dom = hv.conn.defineXML(ET.tostring(root, encoding="unicode"))
    try:
        dom.create()
        # redefined while it runs: the next boot's NIC is link-down on `other`, the running one unchanged
        iface = root.find("./devices/interface")
        assert iface is not None
        ET.SubElement(iface, "link", state="down")
        iface.find("source").set("network", "other")  # type: ignore[union-attr]
        hv.conn.defineXML(ET.tostring(root, encoding="unicode"))
        info, persistent = hv.domain(name), hv.persistent_nics(name)
        assert info is not None and (info.nics, info.links) == ({MAC: "default"}, {MAC: True})
        assert persistent == NicPlacement({MAC: "other"}, {MAC: False})
    finally:
        dom.destroy()
        dom.undefine()
    assert hv.persistent_nics(name) is None


def test_a_connection_that_just_answered_is_not_asked_again(hv: LibvirtHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    conn = hv.conn
    real = conn.getLibVersion

    def counting() -> int:
        asked.append(1)
        return real()

    monkeypatch.setattr(conn, "getLibVersion", counting)
    now = [1000.0]
    monkeypatch.setattr(libvirt_hypervisor.time, "monotonic", lambda: now[0])
    hv._answered = now[0]
    for _ in range(5):  # a burst of calls, as the takeover makes in the window: no RPC to ask
        assert hv.conn is conn
    assert asked == []
    now[0] += CONN_FRESH  # a while later: asked once, then fresh again
    assert hv.conn is conn and hv.conn is conn
    assert asked == [1]
