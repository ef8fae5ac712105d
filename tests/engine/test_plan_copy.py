"""Issue 12 point 7: the run keeps a copy of its plan; safe edits of the plan file (window,
announce, operator, approval, timeouts) are taken and journaled, any other edit is refused with
the fields and a diff; rollback, decommission and abort work from the copy when the file is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader import app
from upgrader.errors import InputError
from upgrader.events import Event, Notice
from upgrader.phases import Phase
from upgrader.plan import parse_plan
from upgrader.plan_edits import compare
from upgrader.run_plan import PLAN_COPY, sha256
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

WINDOW = "window: {start: 2030-01-01T01:30:00, duration: 1h}\n"


def parked(tmp_path: Path, world: WorldFile, extra: str = "") -> tuple[app.Context, Path, list[Event]]:
    plan = tmp_path / "window.yml"
    plan.write_text(FAKE_PLAN.format(world=world.path, keep="1h") + WINDOW + extra)
    events: list[Event] = []
    ctx = app.Context(RunStore(tmp_path / "state"), [events.append])
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.AWAIT_WINDOW and record.parked
    return ctx, plan, events


def test_safe_edit_is_taken_and_journaled(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx, plan, events = parked(tmp_path, fake_world)
    run_id = ctx.store.runs("mailhost")[-1]
    old = sha256(plan.read_bytes())
    text = plan.read_text().replace("2030-01-01T01:30:00", "2030-02-01T01:30:00").replace("timeout: 30s", "timeout: 45s")
    text = text.replace("    run: labos-update fetch\n", "    run: labos-update fetch\n    timeout: 3h\n")
    plan.write_text(text)
    record = app.resume(ctx, "mailhost")  # was: exit 2 "the plan changed since the run started"
    assert record.phase == Phase.AWAIT_WINDOW and "2030-02-01" in (record.parked or "")
    edits = [e for e in ctx.store.journal("mailhost", run_id) if e["kind"] == "plan_edit"]
    assert len(edits) == 1
    assert edits[0]["fields"] == ["upgrade[0].timeout", "window"]
    assert edits[0]["old"] == old and edits[0]["new"] == sha256(text.encode())
    assert ctx.store.read_file("mailhost", run_id, PLAN_COPY) == text.encode()
    assert ctx.store.load("mailhost", run_id).plan_sha256 == sha256(text.encode())
    assert any(isinstance(e, Notice) and "plan file was edited (upgrade[0].timeout, window)" in e.text for e in events)
    app.resume(ctx, "mailhost")  # taken once: no second entry
    assert len([e for e in ctx.store.journal("mailhost", run_id) if e["kind"] == "plan_edit"]) == 1


def test_unsafe_edit_is_refused_with_fields_and_diff(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx, plan, _ = parked(tmp_path, fake_world)
    plan.write_text(plan.read_text().replace("labos-update fetch", "labos-update fetch --all")
                    .replace("2030-01-01", "2030-03-01"))
    with pytest.raises(InputError, match="cannot take") as info:
        app.resume(ctx, "mailhost")
    message = info.value.message
    assert "upgrade[0].run: 'labos-update fetch' -> 'labos-update fetch --all'" in message
    assert "-    run: labos-update fetch\n+    run: labos-update fetch --all" in message
    assert "window" not in message.split("\n")[1]  # only the refused fields are listed
    assert "only window, announce, operator, approval" in (info.value.hint or "")


def test_edited_window_in_the_past_is_refused(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx, plan, _ = parked(tmp_path, fake_world)
    plan.write_text(plan.read_text().replace("2030-01-01", "2020-01-01"))
    with pytest.raises(InputError, match="is in the past"):
        app.resume(ctx, "mailhost")


def test_decommission_works_from_the_copy_when_the_file_is_gone(tmp_path: Path, fake_world: WorldFile,
                                                                          fake_plan: Path) -> None:
    ctx = app.Context(RunStore(tmp_path / "state"), [])
    record = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    fake_plan.unlink()
    done = app.decommission(ctx, "mailhost")  # was: exit 2 "the run's plan ... is gone"
    assert done.phase == Phase.DECOMMISSIONED and done.finished


def test_abort_from_the_copy_when_the_file_is_gone(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx, plan, events = parked(tmp_path, fake_world)
    plan.unlink()
    record = app.abort(ctx, "mailhost")
    assert record is not None and record.phase == Phase.ABORTED and record.finished
    assert any(isinstance(e, Notice) and "is gone: using the run's copy" in e.text for e in events)


def test_rollback_ignores_an_unsafe_edit_and_says_so(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    events: list[Event] = []
    ctx = app.Context(RunStore(tmp_path / "state"), [events.append])
    assert app.start(ctx, app.StartOptions("mailhost", str(fake_plan))).phase == Phase.COMPLETED
    fake_plan.write_text(fake_plan.read_text().replace("/var/mail/", "/srv/mail/"))
    record = app.rollback(ctx, "mailhost")
    assert record.phase == Phase.ROLLED_BACK
    assert any(isinstance(e, Notice) and "edited in sync.paths[0].path: ignored" in e.text for e in events)


def test_relative_paths_of_the_copy_resolve_against_the_original_directory(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx, plan, _ = parked(tmp_path, fake_world)
    record = ctx.store.latest("mailhost")
    assert record is not None
    plan.unlink()
    copy = app._plan_of(record, ctx.store)
    assert copy.resolve_path("keys/id") == tmp_path / "keys" / "id"


def test_legacy_run_without_copy_keeps_the_digest_check(tmp_path: Path, fake_world: WorldFile) -> None:
    ctx, plan, _ = parked(tmp_path, fake_world)
    record = ctx.store.latest("mailhost")
    assert record is not None
    (ctx.store.run_dir("mailhost", record.run_id) / PLAN_COPY).unlink()
    plan.write_text(plan.read_text().replace("2030-01-01", "2030-02-01"))
    with pytest.raises(InputError, match="changed since the run started"):
        app.resume(ctx, "mailhost")


def test_compare_classifies_fields() -> None:
    base = FAKE_PLAN.format(world="/w.json", keep="1h")
    old = parse_plan(base, "p.yml")
    new_text = (base.replace("keep_old_for: 1h", "keep_old_for: 2h") + "approval: required\n"
                + "announce: {sender: a@example.org, to: [b@example.org]}\n"
                + "window: {start: 2030-01-01T03:00:00, duration: 2h, timezone: UTC}\n")
    edit = compare(old, parse_plan(new_text, "p.yml"), base, new_text)
    assert edit.safe_fields == ["announce", "approval", "window"]
    assert edit.unsafe_fields == ["keep_old_for"] and not edit.safe


def test_every_timeout_is_a_safe_field() -> None:
    base = FAKE_PLAN.format(world="/w.json", keep="1h").replace("    run: labos-update fetch\n",
                                                                 "    run: labos-update fetch\n    timeout: 2h\n")
    new_text = (base.replace("timeout: 2h", "timeout: 5h").replace("smtp: {port: 25}", "smtp: {port: 25}\n    timeout: 1m")
                .replace("prod: {host: 192.0.2.10}", "prod: {host: 192.0.2.10, connect_timeout: 30s}")
                .replace("  - reboot: true\n  - name: rebuild", "  - reboot: true\n    timeout: 20m\n  - name: rebuild"))
    edit = compare(parse_plan(base, "p.yml"), parse_plan(new_text, "p.yml"), base, new_text)
    assert edit.safe and edit.safe_fields == ["ssh.prod.connect_timeout", "upgrade[0].timeout", "upgrade[2].timeout",
                                              "validate[0].timeout"]
