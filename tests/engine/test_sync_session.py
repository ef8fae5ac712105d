"""The cutover's sync session (issue 14): the key and the tunnel are set up before the quiesce,
so between the quiesce and the takeover only the final rsync runs (and the key line's revoke on
prod, which must happen while the old VM is still on the segment; the key pair goes from the twin
after the service is back); a tunnel whose connection went is reopened, not rolled back; a kill
anywhere between the open and the revoke leaves no key behind and repeats nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from upgrader import app
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.crash import Cli, op_counts, world_of
from upgrader.testing.fakes import WorldFile
from upgrader.events import Notice
from upgrader.testing.fake_syncer import FakeSyncer
from upgrader.testing.scenario import effects
from upgrader.ui import figures


def window(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The effects from the cutover's quiesce (smtpd stop on prod) to the takeover's first set_link."""
    start = max(i for i, e in enumerate(ops) if e["op"] == "run" and e["role"] == "prod" and "smtpd stop" in e["cmd"])
    end = next(i for i, e in enumerate(ops) if e["op"] == "set_link")
    assert start < end
    return ops[start + 1:end]


def no_sync_key_left(world: dict[str, Any]) -> bool:
    """No key line on any guest, and no key pair."""
    return all(not guest.get("authorized_sync_keys") and not guest.get("sync_key_pairs") for guest in world["guests"].values())


def run(tmp_path: Path, fake_plan: Path) -> tuple[Any, list[Notice]]:
    said: list[Notice] = []
    listen = lambda event: said.append(event) if isinstance(event, Notice) else None  # noqa: E731
    record = app.start(app.Context(RunStore(tmp_path / "state"), [listen]), app.StartOptions("mailhost", str(fake_plan)))
    return record, said


def test_only_the_final_rsync_runs_between_the_quiesce_and_the_takeover(tmp_path: Path, fake_world: WorldFile,
                                                                         fake_plan: Path) -> None:
    record, said = run(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED
    ops = effects(fake_world)
    inside = window(ops)
    # no key made or authorised, no tunnel, no command at all: the pass, then the key line's revoke
    assert [e["op"] for e in inside] == ["sync", "sync_revoke"], inside
    assert inside[0]["final"] is True
    opened = [e for e in ops[:ops.index(inside[0])] if e["op"] == "sync_open"]
    assert opened and opened[-1]["key_id"] == inside[1]["key_id"] and inside[1]["left"] is False
    # the journal agrees: the session was open before the quiesce and revoked before the takeover,
    # the key pair swept after the service was back
    keys = [k for k in record.outputs if k.startswith("cutover.")]
    assert keys == ["cutover.sync_open", "cutover.hold_clients", "cutover.quiesce", "cutover.final_sync", "cutover.sync_close",
                    "cutover.takeover", "cutover.resume", "cutover.service_back", "cutover.persist_nics",
                    "cutover.release_clients", "cutover.sync_sweep"], keys
    assert record.output("cutover.final_sync")["key_id"] == record.output("cutover.sync_open")["key_id"]
    closed = record.output("cutover.sync_close")
    assert closed["key_left"] is False and closed["seconds"] >= 0 and closed["swept"] is None
    assert record.output("cutover.final_sync")["setup_seconds"] == 0.0  # nothing set up in the window
    sweep = [e for e in ops if e["op"] == "sweep_keys"]
    assert sweep[-1]["roles"] == ["prod"] and ops.index(sweep[-1]) > max(i for i, e in enumerate(ops) if e["op"] == "move_nic")
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))
    assert not [n for n in said if n.level == "warning"], said


def test_a_connection_lost_in_the_final_pass_closes_the_session_and_the_retry_opens_one(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_world.change() as world:
        world["sync_drops"] = ["final"]  # the first final pass loses its connection after syncing
    real_open = FakeSyncer.open
    monkeypatch.setattr(FakeSyncer, "open", lambda self, *a, **kw: (time.sleep(0.02), real_open(self, *a, **kw))[1])  # a real open takes time
    record, said = run(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED
    ops = effects(fake_world)
    inside = [e["op"] for e in window(ops)]
    assert inside == ["sync", "sync_revoke", "sync_close", "sync_open", "sync", "sync_revoke"], inside
    assert [e["op"] for e in ops].count("sync_revoke") == [e["op"] for e in ops].count("sync_open")
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))
    # the set-up inside the window is said and timed
    assert any("set up again after the quiesce" in n.text and n.level == "warning" for n in said), said
    setup = record.output("cutover.final_sync")["setup_seconds"]
    assert setup >= 0.02 and f"+ {setup:.2f} s setting the sync up inside the window" in figures(record)["final sync"]


def test_a_stale_connection_after_the_open_reopens_the_session_instead_of_rolling_back(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Review M1: prod's connection died after the open and the quiesce reconnected quietly; the
    tunnel went with the old connection, so the final pass raises ConnectionLost and is redone
    through a new session (no rsync into the dead tunnel, no rollback)."""
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "smtpd stop", "role": "prod", "stale": 1})
    record, said = run(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED, record.error
    ops = effects(fake_world)
    assert [e["op"] for e in window(ops)] == ["sync_revoke", "sync_close", "sync_open", "sync", "sync_revoke"]
    finals = [e for e in ops if e["op"] == "sync" and e["final"]]
    assert len(finals) == 1  # not a pass through the dead tunnel
    assert record.output("cutover.final_sync")["key_id"] != record.output("cutover.sync_open")["key_id"]
    assert any("tunnel went with its connection" in n.text for n in said), said
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))


def test_a_failed_revoke_is_retried_by_a_sweep_while_prod_is_still_the_old_vm(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("sync:revoke")
    record, said = run(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED
    ops = effects(fake_world)
    inside = window(ops)
    assert [e["op"] for e in inside] == ["sync", "sync_revoke", "sweep_keys"] and inside[2]["roles"] == ["prod"]
    closed = record.output("cutover.sync_close")
    assert closed["key_left"] is False and closed["swept"] == 1
    assert no_sync_key_left(json.loads(fake_world.path.read_text())) and record.warnings == []


def test_a_key_left_on_the_old_vm_is_a_run_warning(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"] += ["sync:revoke", "sweep:prod"]
    record, said = run(tmp_path, fake_plan)
    assert record.phase == Phase.COMPLETED
    assert record.output("cutover.sync_close")["key_left"] is True
    [warning] = record.warnings
    assert "stays authorised on the old VM" in warning and "decommission" in warning
    assert any(n.text == warning for n in said)
    old = json.loads(fake_world.path.read_text())["domains"]["mailhost"]["guest"]
    assert json.loads(fake_world.path.read_text())["guests"][old]["authorized_sync_keys"]  # the warning is true


def test_a_failed_quiesce_rolls_back_and_the_open_session_leaves_no_key(tmp_path: Path, fake_world: WorldFile,
                                                                        fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "smtpd stop", "role": "prod", "rc": 1, "stdout": "fault: cannot stop"})
    record = app.start(app.Context(RunStore(tmp_path / "state"), []), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ROLLED_BACK and record.error is not None
    ops = [e["op"] for e in effects(fake_world)]
    assert "cutover.sync_open" in record.outputs and "cutover.sync_close" not in record.outputs
    assert ops.count("sync_close") == ops.count("sync_open")  # the failed cutover closed its session (pair included)
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))


# (pause point, what it exercises, the final pass's sessions: the key a resumed final pass used)
KILLS = [
    ("done:cutover.sync_open", "open journaled, quiesce not begun: resume sweeps the key, opens again before the quiesce"),
    ("begin:cutover.quiesce", "open, quiesce journaled: resume sweeps the key, the final pass opens its own"),
    ("done:cutover.final_sync", "final pass done, key not revoked: resume sweeps, the revoke finds no session, sweeps prod"),
    ("begin:cutover.sync_close", "revoke journaled, not done: it runs again (a sweep of prod, idempotent)"),
    ("after:sync_open:session", "the session's key authorised, sync_open not journaled: resume sweeps, opens again"),
    ("during:sync:final", "inside the session's final pass: resume sweeps, the pass opens its own session"),
    ("begin:cutover.sync_sweep", "key revoked, service back, key pair not swept: the sweep runs again"),
]


@pytest.mark.parametrize(("point", "why"), KILLS, ids=[p for p, _ in KILLS])
def test_a_kill_between_the_open_and_the_close_leaves_no_key(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                                             point: str, why: str) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at(point, "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "reached")
    left = [g for g in world_of(fake_world)["guests"].values() if g.get("authorized_sync_keys") or g.get("sync_key_pairs")]
    assert left, f"{why}: the kill should leave the session's key (or its key pair) behind"
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    world = world_of(fake_world)
    assert no_sync_key_left(world), why
    finals = [e for e in world["effects"] if e["op"] == "sync" and e["final"]]
    assert len(finals) == 1, why  # the final pass ran once
    counts = op_counts(world)
    assert counts["set_link"] == 1 and counts["move_nic"] == 1, why
    quiesces = [e for e in world["effects"] if e["op"] == "run" and e["role"] == "prod" and "smtpd stop" in e["cmd"]]
    assert len(quiesces) == 1, why
    if point in ("done:cutover.sync_open", "after:sync_open:session"):  # the new session opened before the quiesce
        assert [e["op"] for e in window(world["effects"])] == ["sync", "sync_revoke"], why
    if point == "done:cutover.sync_open":  # journaled as a reopen
        assert "cutover.sync_reopen[1]" in cli.record()["outputs"], why
    record = cli.record()
    assert record["outputs"]["cutover.sync_close"] is not None
