"""Issue 12 point 6: a run that never got past preflight (libvirt went away right after the
run was created) is always abortable - with libvirt unreachable, with its plan edited or gone -
and `start` names the command that clears it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrader import app
from upgrader.errors import BusyError
from upgrader.events import Event, Notice, StepDone
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.run_plan import PLAN_COPY
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import effects


def orphan(tmp_path: Path, world: WorldFile, plan: Path) -> tuple[app.Context, RunRecord]:
    """Start a run; libvirt stops answering right after the run claimed the VM: the run is left
    unfinished, its abort's claim release failed (what `start` used to leave behind)."""

    def libvirt_goes_away(event: Event) -> None:
        if isinstance(event, StepDone) and event.key == "claim":
            with world.change() as w:
                w["faults"].append("libvirt")

    ctx = app.Context(RunStore(tmp_path / "state"), [libvirt_goes_away])
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert not record.finished and record.phase in (Phase.PREFLIGHT, Phase.ABORTED)
    return app.Context(RunStore(tmp_path / "state"), []), record


def claim_on(world: WorldFile) -> dict | None:
    return json.loads(world.path.read_text())["domains"]["mailhost"].get("claim")


def test_start_names_the_abort_for_a_run_that_never_left_preflight(tmp_path: Path, fake_world: WorldFile,
                                                                  fake_plan: Path) -> None:
    ctx, record = orphan(tmp_path, fake_world, fake_plan)
    with pytest.raises(BusyError) as info:
        app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert "never got past preflight" in info.value.message and "its claim on the VM" in info.value.message
    assert "`upgrader abort mailhost` clears it" in (info.value.hint or "")


def test_abort_with_libvirt_unreachable_and_plan_gone(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    ctx, record = orphan(tmp_path, fake_world, fake_plan)
    assert claim_on(fake_world) is not None
    fake_plan.unlink()
    seen: list[Event] = []
    ctx.listeners.append(seen.append)
    done = app.abort(ctx, "mailhost")
    assert done is not None and done.phase == Phase.ABORTED and done.finished and done.cleanup_error is None
    journal = ctx.store.journal("mailhost", record.run_id)
    offline = [e for e in journal if e.get("action") == "abort"][-1]
    assert offline["offline"] is True and offline["claim_left"] is True
    warnings = [e.text for e in seen if isinstance(e, Notice)]
    assert any("urn:x-upgrader:claim:1 --config --remove" in w for w in warnings)
    # libvirt is back: a new start removes the claim the finished run left, and goes on
    with fake_world.change() as world:
        world["faults"].remove("libvirt")
    fake_plan.write_text(ctx.store.read_file("mailhost", record.run_id, PLAN_COPY).decode())  # type: ignore[union-attr]
    again = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert again.phase == Phase.COMPLETED
    assert effects(fake_world, "release_claim")  # the stale claim went first


def test_abort_with_libvirt_back_releases_the_claim(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    ctx, record = orphan(tmp_path, fake_world, fake_plan)
    with fake_world.change() as world:
        world["faults"].remove("libvirt")
    fake_plan.write_text(fake_plan.read_text().replace("keep_old_for: 1h", "keep_old_for: 2h"))  # an unsafe edit
    done = app.abort(ctx, "mailhost")
    assert done is not None and done.phase == Phase.ABORTED and done.finished
    assert claim_on(fake_world) is None  # released through libvirt, the run's copy of the plan used


def test_legacy_run_without_copy_and_changed_plan_is_abortable(tmp_path: Path, fake_world: WorldFile,
                                                              fake_plan: Path) -> None:
    ctx, record = orphan(tmp_path, fake_world, fake_plan)
    (ctx.store.run_dir("mailhost", record.run_id) / PLAN_COPY).unlink()  # a run from before copies were kept
    with fake_world.change() as world:
        world["faults"].remove("libvirt")
    fake_plan.write_text(fake_plan.read_text() + "# fixed\n")
    done = app.abort(ctx, "mailhost")  # was: exit 2 "the plan changed ... or abort and start anew"
    assert done is not None and done.phase == Phase.ABORTED and done.finished


def test_bad_smtp_settings_create_no_run(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the environment are read before the run is created (a regression test: the
    review found `UPGRADER_SMTP_PORT=25x` leaving a run behind)."""
    from upgrader.errors import InputError

    monkeypatch.setenv("UPGRADER_SMTP_PORT", "25x")
    plan = tmp_path / "announce.yml"
    plan.write_text(fake_plan.read_text() + "window: {weekly: {weekday: sun, time: '03:00'}, duration: 2h}\n"
                    "announce: {sender: ops@example.org, to: [users@example.org]}\n")
    store = RunStore(tmp_path / "state")
    with pytest.raises(InputError, match="UPGRADER_SMTP_PORT"):
        app.start(app.Context(store, []), app.StartOptions("mailhost", str(plan)))
    assert store.runs("mailhost") == [] and effects(fake_world, "set_claim") == []
