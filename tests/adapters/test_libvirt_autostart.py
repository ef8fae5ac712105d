"""The libvirt adapter's autostart against libvirt's built-in `test:///default` driver (in
process, no daemon, nothing on the host): read, set, idempotent, unknown domain, and why the
decommission must carry it over (a definition copied under another name, as the clone does,
does not have it)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest

from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor
from upgrader.errors import StepFailed

URI = "test:///default"


def _define(conn: libvirt.virConnect, name: str, like: str = "test") -> libvirt.virDomain:
    """`like`'s inactive definition under a new name and UUID (what the adapter's clone does)."""
    root = ET.fromstring(conn.lookupByName(like).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    return conn.defineXML(ET.tostring(root, encoding="unicode"))


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    adapter = LibvirtHypervisor(URI)
    yield adapter
    adapter.conn.close()


@pytest.fixture
def domain(hv: LibvirtHypervisor) -> Iterator[str]:
    name = f"upg-autostart-{uuid.uuid4().hex[:8]}"
    dom = _define(hv.conn, name)
    yield name
    dom.undefine()


def test_autostart_read_and_set(hv: LibvirtHypervisor, domain: str) -> None:
    assert hv.autostart(domain) is False
    hv.set_autostart(domain, True)
    assert hv.autostart(domain) is True
    assert hv.conn.lookupByName(domain).autostart() == 1  # libvirt's own view
    hv.set_autostart(domain, True)  # idempotent
    assert hv.autostart(domain) is True
    hv.set_autostart(domain, False)
    assert hv.autostart(domain) is False


def test_autostart_of_an_unknown_domain_is_a_step_failure(hv: LibvirtHypervisor) -> None:
    with pytest.raises(StepFailed, match="not found"):
        hv.autostart("upg-no-such-domain")
    with pytest.raises(StepFailed, match="not found"):
        hv.set_autostart("upg-no-such-domain", True)


def test_a_copied_definition_does_not_carry_autostart(hv: LibvirtHypervisor, domain: str) -> None:
    hv.set_autostart(domain, True)
    copy = f"{domain}-twin"
    dom = _define(hv.conn, copy, like=domain)
    try:
        assert hv.autostart(copy) is False  # host-level: not in the XML the clone copies
    finally:
        dom.undefine()


def test_libvirt_renames_only_a_shut_off_domain(hv: LibvirtHypervisor) -> None:
    """Why decommission leaves the new prod its twin name (docs/operations.md): a rename needs the
    domain shut off, i.e. downtime."""
    name = f"upg-rename-{uuid.uuid4().hex[:8]}"
    dom = _define(hv.conn, name)
    try:
        dom.create()
        with pytest.raises(libvirt.libvirtError, match="cannot rename active domain"):
            dom.rename(f"{name}-new", 0)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
