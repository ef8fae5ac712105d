"""Decommission carries the old VM's host-level settings (autostart) over to the new prod, on the
fakes: read before the old VM is stopped, journaled as a typed output, applied after the undefine,
exactly once. (Killed at every point in between: tests/engine/test_crash_recovery.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgrader import app
from upgrader.errors import InfraError
from upgrader.events import Event, Notice
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.steps.decommission import AUTOSTART_KEY, SETTINGS_KEY, AutostartCarried, HostSettings
from upgrader.store import RunStore
from upgrader.testing.crash import world_of
from upgrader.testing.fakes import FakeHypervisor, WorldFile
from upgrader.testing.scenario import effects
from upgrader.ui import figures


def context(tmp_path: Path, events: list[Event] | None = None) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [events.append] if events is not None else [])


def journal(tmp_path: Path, record: RunRecord) -> list[dict[str, Any]]:
    return RunStore(tmp_path / "state").journal(record.host, record.run_id)


def set_prod_autostart(world: WorldFile, on: bool) -> None:
    with world.change() as data:
        data["domains"]["mailhost"]["autostart"] = on


def decommissioned(tmp_path: Path, plan: Path, events: list[Event] | None = None) -> RunRecord:
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.COMPLETED and record.parked
    record = app.decommission(context(tmp_path, events), "mailhost")
    assert record.phase == Phase.DECOMMISSIONED and record.finished and record.cleanup_error is None
    return record


def test_the_new_prod_takes_over_the_old_vms_autostart(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    assert world_of(fake_world)["domains"]["mailhost"]["autostart"] is True
    record = decommissioned(tmp_path, fake_plan)
    world = world_of(fake_world)
    assert list(world["domains"]) == ["mailhost-twin"]  # the new prod keeps the twin's name
    assert world["domains"]["mailhost-twin"]["autostart"] is True
    assert effects(fake_world, "set_autostart") == [{"op": "set_autostart", "domain": "mailhost-twin", "on": True}]
    entries = journal(tmp_path, record)
    keys = [e["key"] for e in entries if e["kind"] == "done" and str(e.get("key", "")).startswith("decommission.")]
    # read while the old VM is intact, applied once it is gone
    assert keys.index(SETTINGS_KEY) < keys.index("decommission.destroy") < keys.index("decommission.undefine") \
        < keys.index(AUTOSTART_KEY) < keys.index("decommission.release_claim")
    assert HostSettings.model_validate(record.output(SETTINGS_KEY)) == HostSettings(autostart=True)
    assert AutostartCarried.model_validate(record.output(AUTOSTART_KEY)) == AutostartCarried(autostart=True, was=False)
    assert figures(record)["new prod's autostart"] == "on (as the old VM's)"


def test_an_old_vm_without_autostart_leaves_the_new_prod_without(tmp_path: Path, fake_world: WorldFile,
                                                                 fake_plan: Path) -> None:
    set_prod_autostart(fake_world, False)
    record = decommissioned(tmp_path, fake_plan)
    assert world_of(fake_world)["domains"]["mailhost-twin"]["autostart"] is False
    assert effects(fake_world, "set_autostart") == []  # already as wanted: nothing set
    assert record.output(AUTOSTART_KEY) == AutostartCarried(autostart=False, was=False).model_dump()


def test_an_old_vm_gone_before_its_settings_were_read_is_said_and_nothing_is_set(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """A decommission begun by an upgrader without this step (the old VM undefined already): the
    setting is unknown, said as a warning, and the new prod's is left alone."""
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    with fake_world.change() as data:
        data["domains"]["mailhost"]["running"] = False
        del data["domains"]["mailhost"]
    events: list[Event] = []
    record = app.decommission(context(tmp_path, events), "mailhost")
    assert record.phase == Phase.DECOMMISSIONED and record.cleanup_error is None
    assert record.output(SETTINGS_KEY) == {"autostart": None}
    assert record.output(AUTOSTART_KEY)["autostart"] is None
    assert effects(fake_world, "set_autostart") == []
    assert world_of(fake_world)["domains"]["mailhost-twin"]["autostart"] is False
    assert any(isinstance(e, Notice) and "autostart is not known" in e.text for e in events)


def test_the_dry_run_says_what_decommission_carries_and_the_names(tmp_path: Path, fake_plan: Path) -> None:
    _, _, phases = app.dry_run(app.StartOptions("mailhost", str(fake_plan)))
    lines = [line for p in phases if p.phase == Phase.COMPLETED for line in p.actions]
    assert any("autostart" in line and "keeps the name mailhost-twin" in line for line in lines)


def test_the_fake_autostart_fails_loudly_for_an_unknown_domain(fake_world: WorldFile) -> None:
    hv = FakeHypervisor(fake_world)
    assert hv.autostart("mailhost") is True
    hv.set_autostart("mailhost", False)
    assert hv.autostart("mailhost") is False
    with pytest.raises(InfraError, match="nosuch"):
        hv.autostart("nosuch")
    with pytest.raises(InfraError, match="nosuch"):
        hv.set_autostart("nosuch", True)


def test_the_next_run_can_swap_the_names_back_without_downtime(tmp_path: Path, fake_world: WorldFile,
                                                               fake_plan: Path) -> None:
    """docs/operations.md: the new prod keeps the twin's name; the next upgrade's plan names it as
    its source and the old name as its twin, so after that run's decommission prod has its old
    name again (and still the autostart it had)."""
    decommissioned(tmp_path, fake_plan)
    text = fake_plan.read_text()
    assert "  domain: mailhost\n" in text and "  network: stg-net\n" in text
    swapped = tmp_path / "next.yml"
    swapped.write_text(text.replace("  domain: mailhost\n", "  domain: mailhost-twin\n")
                       .replace("  network: stg-net\n", "  network: stg-net\n  twin_name: mailhost\n"))
    with fake_world.change() as data:
        data["guests"][data["domains"]["mailhost-twin"]["guest"]]["release"] = "1"  # a next release to go to
    decommissioned(tmp_path, swapped)
    world = world_of(fake_world)
    assert list(world["domains"]) == ["mailhost"] and world["domains"]["mailhost"]["autostart"] is True
    assert set(world["images"]) == set(world["domains"]["mailhost"]["disks"].values())
