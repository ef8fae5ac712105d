"""Too little space for the overlays is refused before the snapshot: at preflight, and again right
before the snapshot (the disk may fill in between). prod is never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrader import app
from upgrader.preflight_checks import PreflightFailed
from upgrader.events import Event, StepDone
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import effects


def test_nearly_full_at_preflight(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["free_bytes"] = 100 * 2**20
    store = RunStore(tmp_path / "state")
    with pytest.raises(PreflightFailed, match="only 100 MiB free") as info:  # checked before the run is created
        app.start(app.Context(store, []), app.StartOptions("mailhost", str(fake_plan)))
    assert info.value.exit_code == 1 and store.runs("mailhost") == []
    assert effects(fake_world, "snapshot") == [] and effects(fake_world, "set_claim") == []


def test_disk_fills_between_preflight_and_snapshot(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    def fill(event: Event) -> None:
        if isinstance(event, StepDone) and event.key == "preflight":
            with fake_world.change() as world:
                world["free_bytes"] = 10 * 2**20

    record = app.start(app.Context(RunStore(tmp_path / "state"), [fill]), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ABORTED and record.error is not None
    assert record.error.phase == Phase.SNAPSHOT and "not taking the snapshot" in record.error.message
    assert effects(fake_world, "snapshot") == []
    data = json.loads(fake_world.path.read_text())
    assert list(data["domains"]) == ["mailhost"] and list(data["images"]) == ["/fake/mailhost.qcow2"]
