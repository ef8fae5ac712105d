"""A connection lost in the middle of a step on a guest is handled like a crash at that moment:
reconnect, probe (done-marker; the fakes' stand-in for "wait for a command still running"), redo
only what did not happen - a bounded number of times, then the run aborts with prod untouched."""

from __future__ import annotations

import json
from pathlib import Path

from upgrader import app
from upgrader.events import Event, Notice
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import effects


def start(tmp_path: Path, plan: Path, events: list[Event] | None = None) -> app.RunRecord:
    ctx = app.Context(RunStore(tmp_path / "state"), [events.append] if events is not None else [])
    return app.start(ctx, app.StartOptions("mailhost", str(plan)))


def runs_of(world: WorldFile, needle: str) -> int:
    return sum(1 for e in effects(world, "run") if needle in e["cmd"] and "test -e" not in e["cmd"])


def journal(tmp_path: Path, kind: str) -> list[dict]:
    lines = next((tmp_path / "state" / "mailhost").glob("*/journal.jsonl")).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def test_lost_after_the_command_ran_is_not_run_again(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update fetch", "drop": 1})
    events: list[Event] = []
    record = start(tmp_path, fake_plan, events)
    assert record.phase == Phase.COMPLETED
    assert runs_of(fake_world, "labos-update fetch") == 1  # the probe found its done-marker
    assert record.output("upgrade[0]").get("probed") is True
    lost = journal(tmp_path, "connection_lost")
    assert [(e["key"], e["attempt"]) for e in lost] == [("upgrade[0]", 1)]
    assert any(isinstance(e, Notice) and "reconnecting" in e.text for e in events)


def test_lost_before_the_command_ran_runs_it_once(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update fetch", "cut": 2})
    record = start(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED
    assert runs_of(fake_world, "labos-update fetch") == 1
    assert len(journal(tmp_path, "connection_lost")) == 2


def test_lost_every_time_holds_with_the_twin_kept(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update fetch", "cut": 99})
    record = start(tmp_path, fake_plan)
    assert record.phase == Phase.HELD and record.held is not None
    assert record.held.error_kind == "ConnectionLost" and record.held.step == "upgrade[0]"
    assert len(journal(tmp_path, "connection_lost")) == 3
    data = json.loads(fake_world.path.read_text())
    assert data["domains"]["mailhost-twin"]["running"] and effects(fake_world, "set_link") == []


def test_lost_every_time_aborts_with_prod_untouched(tmp_path: Path, fake_world: WorldFile, abort_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update fetch", "cut": 99})
    record = start(tmp_path, abort_plan)
    assert record.phase == Phase.ABORTED and record.error is not None
    assert record.error.kind == "ConnectionLost" and "lost" in record.error.message
    assert len(journal(tmp_path, "connection_lost")) == 3
    data = json.loads(fake_world.path.read_text())
    assert list(data["domains"]) == ["mailhost"] and effects(fake_world, "set_link") == []


def test_lost_during_a_presync_pass_and_the_final_sync_is_redone(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["sync_drops"] = ["pass", "final"]
    record = start(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED, record.error
    keys = [e["key"] for e in journal(tmp_path, "connection_lost")]
    assert keys == ["presync.pass[1]", "cutover.final_sync"]
    finals = [e for e in effects(fake_world, "sync") if e["final"]]
    assert len(finals) == 2  # the redone final pass: rsync is idempotent
    twin = json.loads(fake_world.path.read_text())
    mail = twin["guests"][twin["domains"]["mailhost-twin"]["guest"]]["mail"]
    assert len(mail) == 20 + 40 + 8 + 1
