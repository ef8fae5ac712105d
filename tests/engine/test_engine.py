"""The engine on the fakes, in-process: happy path, abort, rollback, operator requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrader.testing.scenario import FAKE_PLAN, effects
from upgrader import app
from upgrader.errors import BusyError, IllegalAction, InputError, LockedError
from upgrader.events import Event, StepInDoubt
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile


def context(tmp_path: Path, events: list[Event] | None = None) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [events.append] if events is not None else [])


def guest_of(world: WorldFile, domain: str) -> dict:
    data = json.loads(world.path.read_text())
    return data["guests"][data["domains"][domain]["guest"]]


def test_happy_path_to_decommissioned(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED and not record.finished and record.parked
    record = app.decommission(context(tmp_path), "mailhost")
    assert record.phase == Phase.DECOMMISSIONED and record.finished and record.error is None
    world = json.loads(fake_world.path.read_text())
    assert list(world["domains"]) == ["mailhost-twin"]
    twin = world["guests"][world["domains"]["mailhost-twin"]["guest"]]
    assert twin["release"] == "2"
    assert len(twin["mail"]) == 20 + 40 + 8 + 1  # initial + mail that arrived during pre-sync
    assert record.output("decommission.undefine")["bytes_freed"] > 0
    assert all(img["backing"] is None for img in world["images"].values())
    assert [t.phase for t in record.timings][:3] == [Phase.PREFLIGHT, Phase.SNAPSHOT, Phase.CLONE]


def test_keep_old_parks_then_decommission(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = tmp_path / "keep.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="7d"))
    ctx = context(tmp_path)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.COMPLETED and record.parked and "kept until" in record.parked
    assert "mailhost" in json.loads(fake_world.path.read_text())["domains"]
    record = app.decommission(ctx, "mailhost")
    assert record.phase == Phase.DECOMMISSIONED
    assert "mailhost" not in json.loads(fake_world.path.read_text())["domains"]


def test_upgrade_failure_aborts_and_restores_prod(tmp_path: Path, fake_world: WorldFile, abort_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update install", "rc": 1, "stdout": "fault: upgrade fails"})
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(abort_plan)))
    assert record.phase == Phase.ABORTED and record.finished
    assert record.error is not None and "exited 1" in record.error.message
    world = json.loads(fake_world.path.read_text())
    assert list(world["domains"]) == ["mailhost"]
    assert world["domains"]["mailhost"]["disks"] == {"vda": "/fake/mailhost.qcow2"}
    assert list(world["images"]) == ["/fake/mailhost.qcow2"]
    assert guest_of(fake_world, "mailhost")["release"] == "1"


def test_validation_failure_aborts(tmp_path: Path, fake_world: WorldFile, abort_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("probe:staging")
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(abort_plan)))
    assert record.phase == Phase.ABORTED and record.error is not None
    assert record.error.phase == Phase.VALIDATE_STAGING
    assert effects(fake_world, "set_link") == []  # prod never touched


def test_verify_failure_rolls_back_with_reverse_sync(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    # the new prod fails verification; mail written to it after cutover must come back
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "smtpd start", "role": "prod", "set": {"services": True}, "add_mail": 3})
        world["faults"].append("probe:prod")
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ROLLED_BACK and record.error is not None
    world = json.loads(fake_world.path.read_text())
    assert list(world["domains"]) == ["mailhost"]
    old = world["domains"]["mailhost"]
    assert all(old["links"].values()) and old["disks"] == {"vda": "/fake/mailhost.qcow2"}
    reverse = [e for e in world["effects"] if e["op"] == "sync" and e["source"] == "staging"]
    assert len(reverse) == 1 and reverse[0]["final"] and reverse[0]["files"] == 3
    mail = world["guests"][old["guest"]]["mail"]
    assert len([m for m in mail if m.startswith("after-mailhost-twin")]) == 3  # nothing lost
    assert len(mail) == 20 + 40 + 8 + 1 + 3 + 3  # + what clients sent the old VM once it served again


def test_abort_only_before_cutover(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = tmp_path / "keep.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="7d"))
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    with pytest.raises(IllegalAction) as info:
        app.abort(ctx, "mailhost")
    assert "rollback" in (info.value.hint or "")
    record = app.rollback(ctx, "mailhost")
    assert record.phase == Phase.ROLLED_BACK
    assert record.error is None


def test_second_start_while_unfinished_is_busy(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = tmp_path / "keep.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="7d"))
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    with pytest.raises(BusyError):
        app.start(ctx, app.StartOptions("mailhost", str(plan)))


def test_locked_host_refused(tmp_path: Path, fake_plan: Path) -> None:
    ctx = context(tmp_path)
    with ctx.store.lock("mailhost"):
        with pytest.raises(LockedError):
            app.resume(context(tmp_path), "mailhost")


def test_resume_refuses_changed_plan(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("probe:staging")
        world["commands"].insert(0, {"match": "smtpd stop", "rc": 0})
    plan = tmp_path / "window.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h") + "window: {start: 2030-01-01T01:30:00, duration: 1h}\n")
    with fake_world.change() as world:
        world["faults"].remove("probe:staging")
    ctx = context(tmp_path)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and record.parked
    plan.write_text(plan.read_text().replace("/var/mail/", "/var/spool/mail/"))  # not a field a run can take
    with pytest.raises(InputError, match="cannot take") as info:
        app.resume(ctx, "mailhost")
    assert "sync.paths[0].path: '/var/mail/' -> '/var/spool/mail/'" in info.value.message
    assert "+    - path: /var/spool/mail/" in info.value.message  # the diff is shown


def test_window_parks_and_now_goes_on(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = tmp_path / "window.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h") + "window: {start: 2030-01-01T01:30:00, duration: 1h}\n")
    ctx = context(tmp_path)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and record.parked
    assert effects(fake_world, "set_link") == []
    with pytest.raises(InputError, match="--yes"):
        app.resume(ctx, "mailhost", now=True)
    record = app.resume(ctx, "mailhost", now=True, yes=True)
    assert record.phase == Phase.COMPLETED
    entries = ctx.store.journal("mailhost", record.run_id)
    assert {"kind": "operator", "action": "now"}.items() <= next(e for e in entries if e.get("kind") == "operator").items()


def test_abort_request_stops_a_running_upgrade(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    events: list[Event] = []
    ctx = context(tmp_path, events)

    def request_on_reboot(event: Event) -> None:
        if getattr(event, "key", None) == "upgrade[2]" and type(event).__name__ == "StepDone":
            record = ctx.store.latest("mailhost")
            assert record is not None
            (ctx.store.run_dir("mailhost", record.run_id) / "abort-requested").touch()

    ctx.listeners.append(request_on_reboot)
    record = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ABORTED and record.error is not None
    assert "operator" in record.error.message
    ran = [e["cmd"] for e in effects(fake_world, "run")]
    assert ran.count("labos-update install") == 1  # upgrade[3] never ran
    assert not any(isinstance(e, StepInDoubt) for e in events)


def test_service_back_uses_the_fast_wait(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """After the takeover the orchestrator waits for prod's service with short, frequent attempts
    (not the checks' 1 s retry), and the downtime still runs from the quiesce's begin; the
    rehearsal on the twin times the service start with the same wait."""
    record = app.start(context(tmp_path), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    waits = effects(fake_world, "wait_answers")
    assert [(w["role"], w["interval"], w["connect_timeout"]) for w in waits] == [("staging", 0.05, 0.2), ("prod", 0.05, 0.2)]
    back = record.output("cutover.service_back")
    assert back["downtime"] is not None and back["downtime"] >= 0
