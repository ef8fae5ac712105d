"""The libvirt adapter's NIC updates on the lab's real libvirtd (the test driver cannot update
devices): LIVE changes the running domain only, CONFIG its persistent definition only, BOTH
both. The cutover's window uses LIVE; `cutover.persist_nics` CONFIG."""

from __future__ import annotations

import pytest

from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.lab import Lab
from upgrader.lab import config as C
from upgrader.ports import NicScope

pytestmark = pytest.mark.lab

MAC = C.MAILHOST_MAC


def placements(hv: LibvirtHypervisor) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """((bridge, link up) live, (bridge, link up) persistent) of mailhost's NIC"""
    live, config = hv.domain(C.MAILHOST), hv.persistent_nics(C.MAILHOST)
    assert live is not None and config is not None
    return (live.nics[MAC], live.links[MAC]), (config.nics[MAC], config.links[MAC])


def test_live_config_and_both_change_only_what_they_name(lab: Lab) -> None:
    hv = LibvirtHypervisor(lab.uri)
    try:
        assert placements(hv) == ((C.BR_PROD, True), (C.BR_PROD, True))
        hv.set_link(C.MAILHOST, MAC, False, NicScope.LIVE)
        assert placements(hv) == ((C.BR_PROD, False), (C.BR_PROD, True))
        hv.set_link(C.MAILHOST, MAC, False, NicScope.CONFIG)
        assert placements(hv) == ((C.BR_PROD, False), (C.BR_PROD, False))
        hv.set_link(C.MAILHOST, MAC, True)
        assert placements(hv) == ((C.BR_PROD, True), (C.BR_PROD, True))
        hv.move_nic(C.MAILHOST, MAC, C.BR_STG, NicScope.LIVE)
        assert placements(hv) == ((C.BR_STG, True), (C.BR_PROD, True))
        assert lab.smtp_probe(timeout=5)["ok"] is False  # no longer on the production segment
        hv.move_nic(C.MAILHOST, MAC, C.BR_STG, NicScope.CONFIG)
        assert placements(hv) == ((C.BR_STG, True), (C.BR_STG, True))
        hv.move_nic(C.MAILHOST, MAC, C.BR_PROD)
        assert placements(hv) == ((C.BR_PROD, True), (C.BR_PROD, True))
        assert lab.smtp_probe()["ok"] is True
    finally:
        hv.move_nic(C.MAILHOST, MAC, C.BR_PROD)
        hv.set_link(C.MAILHOST, MAC, True)
        hv.conn.close()
