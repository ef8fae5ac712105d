"""`upgrader preflight` against the lab's real libvirt and SSH (issue 12 point 5): every check
passes on the lab's plan, the twin's memory is read from the domain, a missing sync path and a
hypervisor without the memory are inhibitors; nothing is created or claimed."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader import app
from upgrader.app_preflight import preflight as run_preflight
from upgrader.lab import Lab
from upgrader.store import RunStore

pytestmark = pytest.mark.lab

PLAN = Path(__file__).resolve().parents[2] / "playbooks" / "lab-mailhost.yml"


def test_preflight_on_the_lab(lab: Lab, tmp_path: Path) -> None:
    lab.up()  # idempotent; test_lab_e2e.py's last test tore the session's lab down (the fixture downs it at the end)
    ctx = app.Context(RunStore(tmp_path / "state"), [])
    _, plan, report = run_preflight(ctx, app.StartOptions("mailhost", str(PLAN)))
    assert report.ok, report.inhibitors
    memory = next(c for c in report.checks if c.name == "memory")
    assert "0.5 GiB" in memory.detail  # the lab guest is defined with 512 MiB
    assert not (tmp_path / "state").exists()
    from upgrader.adapters.libvirt_hypervisor import LibvirtHypervisor

    hv = LibvirtHypervisor(plan.source.libvirt_uri)
    assert hv.claim_of("mailhost") is None and hv.domain(plan.twin_name) is None
    assert hv.free_memory() > (hv.domain("mailhost").memory or 0) > 0  # type: ignore[union-attr]

    edited = tmp_path / "lab.yml"
    edited.write_text(PLAN.read_text().replace("/var/mail/", "/var/nonexistent/"))
    _, _, report = run_preflight(ctx, app.StartOptions("mailhost", str(edited)))
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["sync paths"] and "/var/nonexistent/" in failed[0].detail
