"""Held runs on the fakes: every kind of failure in every holdable phase ends `held` with the twin
kept and prod untouched; from held, retry, skip, resume and abort each reach the right end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgrader import app, app_due, app_status
from upgrader.errors import IllegalAction, InputError
from upgrader.events import Event, Held
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.store import RunStore
from upgrader.testing.crash import guest, op_counts, world_of
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import effects


def context(tmp_path: Path, events: list[Event] | None = None) -> app.Context:
    sink = events if events is not None else []
    return app.Context(RunStore(tmp_path / "state"), [sink.append])


def journal(tmp_path: Path, record: RunRecord) -> list[dict[str, Any]]:
    return RunStore(tmp_path / "state").journal(record.host, record.run_id)


FAILURES: dict[str, tuple[dict[str, Any], Phase, str]] = {
    # name: (world change, phase held in, failed step)
    "twin never answers SSH": ({"faults": ["ssh:staging"]}, Phase.CLONE, "clone.ssh"),
    "upgrade command fails": (
        {"commands": [{"match": "labos-update install", "rc": 1, "stdout": "port mailfilter: build failed"}]},
        Phase.UPGRADE, "upgrade[1]"),
    "reboot never comes back": ({"faults": ["reboot:staging"]}, Phase.UPGRADE, "upgrade[2]"),
    "connection lost for good": ({"commands": [{"match": "labos-update fetch", "cut": 99}]}, Phase.UPGRADE, "upgrade[0]"),
    "validation check fails": ({"faults": ["probe:staging"]}, Phase.VALIDATE_STAGING, "validate_staging"),
    "pre-sync pass fails": ({"faults": ["sync:pass"]}, Phase.PRESYNC, "presync.pass[1]"),
}


def _break(world_file: WorldFile, change: dict[str, Any]) -> None:
    with world_file.change() as world:
        for key, items in change.items():
            world[key] = [*items, *world[key]]


def _mend(world_file: WorldFile, change: dict[str, Any]) -> None:
    with world_file.change() as world:
        for key, items in change.items():
            world[key] = [x for x in world[key] if x not in items and not (isinstance(x, dict) and x.get("was_cut"))]


@pytest.mark.parametrize("name", list(FAILURES))
def test_every_failure_before_cutover_holds_with_the_twin_kept(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                                               name: str) -> None:
    change, phase, step = FAILURES[name]
    _break(fake_world, change)
    events: list[Event] = []
    record = app.start(context(tmp_path, events), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.HELD and not record.finished
    assert record.held is not None and record.held.phase == phase and record.held.step == step, record.held
    assert [e for e in events if isinstance(e, Held)][0].step == step
    world = world_of(fake_world)
    twin = world["domains"]["mailhost-twin"]
    assert twin["running"] and set(twin["nics"].values()) == {"stg-net"}  # on staging only
    assert world["domains"]["mailhost"]["running"] and effects(fake_world, "set_link") == []  # prod untouched
    assert guest(world_of(fake_world), "mailhost").get("authorized_sync_keys", []) == []
    # the lock is released while held: another command can take the host
    with RunStore(tmp_path / "state").lock("mailhost"):
        pass
    assert any(e["kind"] == "held" and e["step"] == step for e in journal(tmp_path, record))


def test_a_failed_command_is_held_with_its_result(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    _break(fake_world, FAILURES["upgrade command fails"][0])
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    held = record.held
    assert held is not None and held.rc == 1 and held.command == "labos-update install"
    assert held.title == "install-1" and "port mailfilter: build failed" in (held.tail or "")
    reloaded = RunStore(tmp_path / "state").load("mailhost", record.run_id)
    assert reloaded.held == held  # in run.json too


@pytest.mark.parametrize("name", list(FAILURES))
def test_retry_after_the_fix_completes(tmp_path: Path, fake_world: WorldFile, fake_plan: Path, name: str) -> None:
    change, _, step = FAILURES[name]
    _break(fake_world, change)
    ctx = context(tmp_path)
    held = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    _mend(fake_world, change)
    record = app.retry(ctx, "mailhost", "alice")
    assert record.phase == Phase.COMPLETED and record.held is None and record.error is None
    assert record.output(step) and not record.output(step).get("skipped")
    assert guest(world_of(fake_world), "mailhost-twin")["release"] == "2"
    assert op_counts(world_of(fake_world))["clone"] == 1  # the same twin, not a new one
    retry = [e for e in journal(tmp_path, held) if e["kind"] == "operator" and e.get("action") == "retry"]
    assert retry and retry[0]["by"] == "alice" and retry[0]["step"] == step
    final = app.decommission(ctx, "mailhost")
    assert final.phase == Phase.DECOMMISSIONED


def test_retry_that_fails_again_holds_again(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    _break(fake_world, FAILURES["upgrade command fails"][0])
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    record = app.retry(ctx, "mailhost", "alice")
    assert record.phase == Phase.HELD and record.held is not None and record.held.step == "upgrade[1]"
    runs = [e for e in effects(fake_world, "run") if e["cmd"] == "labos-update install"]
    assert len(runs) == 2  # the failed step ran again, from scratch


def test_resume_of_a_held_run_retries(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    change = FAILURES["validation check fails"][0]
    _break(fake_world, change)
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    _mend(fake_world, change)
    record = app.resume(ctx, "mailhost", who="bob")
    assert record.phase == Phase.COMPLETED


def test_skip_marks_the_step_done_by_hand_and_goes_on(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    _break(fake_world, FAILURES["upgrade command fails"][0])
    ctx = context(tmp_path)
    held = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    with fake_world.change() as world:  # the operator finished the install by hand
        world["commands"] = [c for c in world["commands"] if c.get("rc") != 1]
    record = app.skip(ctx, "mailhost", "alice", "built mailfilter by hand from the patched port")
    assert record.phase == Phase.COMPLETED
    assert record.output("upgrade[1]")["skipped"] is True and record.output("upgrade[1]")["by"] == "alice"
    entries = journal(tmp_path, held)
    assert any(e["kind"] == "operator" and e.get("action") == "skip" and "by hand" in e.get("reason", "") for e in entries)
    runs = [e for e in effects(fake_world, "run") if e["cmd"] == "labos-update install"]
    assert len(runs) == 2  # the failed attempt and upgrade[3]; the skipped step did not run again


def test_skip_is_refused_for_the_clone_and_without_a_reason(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    _break(fake_world, FAILURES["twin never answers SSH"][0])
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    with pytest.raises(IllegalAction) as info:
        app.skip(ctx, "mailhost", "alice", "no")
    assert "clone.ssh" in info.value.message and "retry" in (info.value.hint or "")
    with pytest.raises(InputError):
        app.skip(ctx, "mailhost", "alice", "  ")
    assert RunStore(tmp_path / "state").latest("mailhost").phase == Phase.HELD  # type: ignore[union-attr]


def test_skip_is_refused_for_a_presync_pass(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Its figures are the downtime forecast: retry it."""
    change = FAILURES["pre-sync pass fails"][0]
    _break(fake_world, change)
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    with pytest.raises(IllegalAction, match="cannot be skipped"):
        app.skip(ctx, "mailhost", "alice", "the final sync copies it anyway")
    _mend(fake_world, change)
    assert app.retry(ctx, "mailhost", "alice").phase == Phase.COMPLETED


def test_abort_from_held_discards_the_twin(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    _break(fake_world, FAILURES["upgrade command fails"][0])
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    record = app.abort(ctx, "mailhost")
    assert record is not None and record.phase == Phase.ABORTED and record.finished
    world = world_of(fake_world)
    assert list(world["domains"]) == ["mailhost"] and list(world["images"]) == ["/fake/mailhost.qcow2"]
    assert world["domains"]["mailhost"]["disks"] == {"vda": "/fake/mailhost.qcow2"}


def test_retry_and_skip_need_a_held_run(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))  # completed, kept
    with pytest.raises(IllegalAction) as info:
        app.retry(ctx, "mailhost", "alice")
    assert "not held" in info.value.message
    with pytest.raises(IllegalAction):
        app.skip(ctx, "mailhost", "alice", "why not")


def test_on_failure_abort_and_the_step_override(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    _break(fake_world, FAILURES["upgrade command fails"][0])
    text = fake_plan.read_text().replace("  - name: install-1\n", "  - name: install-1\n    on_failure: abort\n")
    fake_plan.write_text(text)
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ABORTED and list(world_of(fake_world)["domains"]) == ["mailhost"]


def test_a_step_may_hold_when_the_plan_aborts(tmp_path: Path, fake_world: WorldFile, abort_plan: Path) -> None:
    _break(fake_world, FAILURES["upgrade command fails"][0])
    text = abort_plan.read_text().replace("  - name: install-1\n", "  - name: install-1\n    on_failure: hold\n")
    abort_plan.write_text(text)
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(abort_plan)))
    assert record.phase == Phase.HELD


def test_preflight_failure_still_aborts(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    from upgrader.events import StepDone
    from upgrader.preflight_checks import PreflightFailed

    _break(fake_world, {"faults": ["ssh:prod"]})
    with pytest.raises(PreflightFailed):  # found before the run is created: nothing to hold or abort
        app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert RunStore(tmp_path / "state").runs("mailhost") == []
    with fake_world.change() as world:
        world["faults"].remove("ssh:prod")

    def ssh_goes_away(event: Event) -> None:  # after the run was created: its own preflight step fails
        if isinstance(event, StepDone) and event.key == "claim":
            _break(fake_world, {"faults": ["ssh:prod"]})

    ctx = app.Context(RunStore(tmp_path / "state"), [ssh_goes_away])
    record = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ABORTED and record.error is not None and record.error.phase == Phase.PREFLIGHT


def test_run_due_leaves_a_held_run_alone_and_it_never_cuts_over(tmp_path: Path, fake_world: WorldFile,
                                                                  fake_plan: Path) -> None:
    """A held run has no fixed window yet (that happens in await_window, after every holdable
    step): run-due passes it by, whatever the time, and nothing moves to prod."""
    import datetime as dt

    fake_plan.write_text(fake_plan.read_text() + "window: {start: 2026-11-27T12:00:00, duration: 1h, timezone: UTC}\n")
    _break(fake_world, FAILURES["upgrade command fails"][0])
    clock = [dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc)]
    ctx = app.Context(RunStore(tmp_path / "state"), [], now=lambda: clock[0])
    assert app.start(ctx, app.StartOptions("mailhost", str(fake_plan))).phase == Phase.HELD
    for hours in (2, 3, 24 * 8):  # in the window, after it, a week later
        clock[0] = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc) + dt.timedelta(hours=hours)
        assert app_due.run_due(ctx) == []
    record = RunStore(tmp_path / "state").latest("mailhost")
    assert record is not None and record.phase == Phase.HELD
    assert effects(fake_world, "set_link") == [] and effects(fake_world, "move_nic") == []


def test_retry_starts_a_twin_found_stopped(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    change = FAILURES["upgrade command fails"][0]
    _break(fake_world, change)
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    with fake_world.change() as world:  # days later: the hypervisor was rebooted, the twin is off
        world["domains"]["mailhost-twin"]["running"] = False
    _mend(fake_world, change)
    record = app.retry(ctx, "mailhost", "alice")
    assert record.phase == Phase.COMPLETED
    assert op_counts(world_of(fake_world))["start"] == 2  # the clone's, and the one retry needed


def test_a_hold_whose_run_json_was_not_saved_is_reconciled_with_its_details(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """A crash between the transition's journal line and run.json: the journal's `held` entry
    gives the details back (status and retry see them)."""
    _break(fake_world, FAILURES["upgrade command fails"][0])
    ctx = context(tmp_path)
    held = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    store = RunStore(tmp_path / "state")
    stale = held.model_copy(update={"phase": Phase.UPGRADE, "held": None})
    store.save(stale)
    [record] = app_status.status(ctx, "mailhost")
    assert record.phase == Phase.HELD and record.held is not None and record.held.step == "upgrade[1]"
    assert record.held.rc == 1
