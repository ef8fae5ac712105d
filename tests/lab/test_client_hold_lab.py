"""The client hold (issue 14) for real: the libvirt adapter's nwfilter on the running LabOS
mailhost's NIC, seen from the client namespace and in the firewall of libvirtd's namespace."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.errors import InfraError
from upgrader.lab import Lab
from upgrader.lab import config as C
from upgrader.ports import client_hold_name

pytestmark = pytest.mark.lab

NAME = client_hold_name("labtest")
OTHER = client_hold_name("labtest-other")


@pytest.fixture
def hv(lab: Lab) -> Iterator[LibvirtHypervisor]:
    adapter = LibvirtHypervisor(lab.uri)
    try:
        yield adapter
    finally:  # whatever a failing test left
        adapter.release_clients(C.MAILHOST, C.MAILHOST_MAC)
        for name in (NAME, OTHER):
            adapter.undefine_client_hold(name)
        adapter.conn.close()


def test_hold_drops_new_connections_while_open_ones_drain(lab: Lab, hv: LibvirtHypervisor) -> None:
    assert lab.client_holds().clear
    with lab.hold_probe() as probe:  # an SMTP connection opened before the hold
        assert probe.banner.startswith("220 ")
        assert probe.connect(0.3) == "ok"

        hv.define_client_hold(NAME, [25])
        hv.define_client_hold(NAME, [25])  # idempotent
        assert hv.client_hold_filters() == [NAME]
        hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, NAME)

        assert probe.connect(0.3) == "timeout"  # dropped, not refused: the client retransmits
        assert probe.noop().startswith("250 ")  # the open connection still talks
        assert hv.client_holds(C.MAILHOST) == {C.MAILHOST_MAC: NAME}
        state = lab.client_holds()
        tap = state.taps[C.MAILHOST_MAC]
        assert state.filterrefs == {C.MAILHOST_MAC: NAME}
        assert state.bindings == [(tap, NAME)] and state.filters == [NAME]
        assert f"iptables -A FO-{tap} -p tcp -m tcp --dport 25 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP" in state.rules
        assert not [r for r in state.rules if r.startswith("ip6tables -A") and "DROP" in r]
        assert not [r for r in state.rules if "REJECT" in r]

        hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, NAME)  # idempotent
        hv.define_client_hold(NAME, [25, 143])  # redefined while in use: libvirt rewrites the rules
        assert any("--dport 143 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP" in r for r in lab.client_holds().rules)
        assert probe.connect(0.3) == "timeout" and hv.client_holds(C.MAILHOST) == {C.MAILHOST_MAC: NAME}
        hv.define_client_hold(OTHER, [25])
        with pytest.raises(InfraError, match="already has the nwfilter") as other:
            hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, OTHER)
        assert "its own nwfilter" in (other.value.hint or "")
        with pytest.raises(InfraError, match="undefining nwfilter"):
            hv.undefine_client_hold(NAME)  # still in use

        hv.release_clients(C.MAILHOST, C.MAILHOST_MAC)
        assert probe.connect(0.3) == "ok"  # at once
        hv.release_clients(C.MAILHOST, C.MAILHOST_MAC)  # idempotent
        hv.undefine_client_hold(NAME)
        hv.undefine_client_hold(OTHER)
        hv.undefine_client_hold(NAME)  # idempotent
        assert probe.noop().startswith("250 ")

    assert hv.client_holds(C.MAILHOST) == {} and hv.client_hold_filters() == []
    state = lab.client_holds()
    assert state.clear, state


def test_hold_refuses_what_it_cannot_hold(lab: Lab, hv: LibvirtHypervisor) -> None:
    with pytest.raises(InfraError, match="not defined"):
        hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, NAME)
    hv.define_client_hold(NAME, [25])
    with pytest.raises(InfraError, match="has no NIC"):
        hv.hold_clients(C.MAILHOST, "52:54:00:ff:ff:ff", NAME)
    with pytest.raises(InfraError, match="not running"):
        hv.hold_clients("no-such-domain", C.MAILHOST_MAC, NAME)
    hv.release_clients("no-such-domain", C.MAILHOST_MAC)  # no-op
    hv.release_clients(C.MAILHOST, C.MAILHOST_MAC)  # nothing held: no-op
    assert hv.client_holds("no-such-domain") == {}
    hv.undefine_client_hold(NAME)
    assert lab.client_holds().clear


def test_hold_outlives_a_libvirtd_restart_and_is_released_after(lab: Lab, hv: LibvirtHypervisor) -> None:
    """Crash safety: libvirtd restarted while prod is held (an upgrade of the host's libvirt)
    keeps the binding and its rules; the adapter reconnects and the release still works."""
    with lab.hold_probe() as probe:
        hv.define_client_hold(NAME, [25])
        hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, NAME)
        lab.restart_libvirtd()
        assert hv.client_holds(C.MAILHOST) == {C.MAILHOST_MAC: NAME}
        assert probe.connect(0.3) == "timeout" and probe.noop().startswith("250 ")
        hv.release_clients(C.MAILHOST, C.MAILHOST_MAC)
        hv.undefine_client_hold(NAME)
        assert probe.connect(0.3) == "ok"
    assert lab.client_holds().clear


def test_a_stopped_vm_drops_its_hold_and_comes_back_unheld(lab: Lab, hv: LibvirtHypervisor) -> None:
    """LIVE only, so fail-open: stopping the held VM tears the rules down with it, and it starts
    again without the filterref (the persistent config never had it)."""
    hv.define_client_hold(NAME, [25])
    hv.hold_clients(C.MAILHOST, C.MAILHOST_MAC, NAME)
    assert NAME not in ET.tostring(hv._xml(hv.conn.lookupByName(C.MAILHOST), inactive=True), encoding="unicode")
    hv.destroy(C.MAILHOST)
    assert hv.client_holds(C.MAILHOST) == {} and hv.conn.listAllNWFilterBindings() == []
    hv.release_clients(C.MAILHOST, C.MAILHOST_MAC)  # off: no-op
    hv.undefine_client_hold(NAME)  # no longer in use
    hv.start(C.MAILHOST)
    lab.wait_ssh(C.MAILHOST)
    state = lab.client_holds()
    assert state.clear and hv.client_holds(C.MAILHOST) == {}
    assert lab.smtp_probe()["ok"]
