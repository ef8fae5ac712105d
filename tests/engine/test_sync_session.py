"""The cutover's sync session (issue 14): the key and the tunnel are set up before the quiesce,
so between the quiesce and the takeover only the final rsync runs (and the key's removal, which
must happen while the old VM is still on the segment); a kill anywhere between the open and the
close leaves no key behind and repeats nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from upgrader import app
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.crash import Cli, op_counts, world_of
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import effects


def window(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The effects from the cutover's quiesce (smtpd stop on prod) to the takeover's first set_link."""
    start = max(i for i, e in enumerate(ops) if e["op"] == "run" and e["role"] == "prod" and "smtpd stop" in e["cmd"])
    end = next(i for i, e in enumerate(ops) if e["op"] == "set_link")
    assert start < end
    return ops[start + 1:end]


def no_sync_key_left(world: dict[str, Any]) -> bool:
    return all(not guest.get("authorized_sync_keys") for guest in world["guests"].values())


def test_only_the_final_rsync_runs_between_the_quiesce_and_the_takeover(tmp_path: Path, fake_world: WorldFile,
                                                                         fake_plan: Path) -> None:
    record = app.start(app.Context(RunStore(tmp_path / "state"), []), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    ops = effects(fake_world)
    inside = window(ops)
    # no key made or authorised, no tunnel, no command at all: the pass, then the key's removal
    assert [e["op"] for e in inside] == ["sync", "sync_close"], inside
    assert inside[0]["final"] is True
    opened = [e for e in ops[:ops.index(inside[0])] if e["op"] == "sync_open"]
    assert opened and opened[-1]["key_id"] == inside[1]["key_id"] and inside[1]["left"] is False
    # the journal agrees: the session was open before the quiesce and closed before the takeover
    keys = [k for k in record.outputs if k.startswith("cutover.")]
    assert keys[:5] == ["cutover.sync_open", "cutover.quiesce", "cutover.final_sync", "cutover.sync_close", "cutover.takeover"]
    assert record.output("cutover.final_sync")["key_id"] == record.output("cutover.sync_open")["key_id"]
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))


def test_a_connection_lost_in_the_final_pass_closes_the_session_and_the_retry_opens_one(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["sync_drops"] = ["final"]  # the first final pass loses its connection after syncing
    record = app.start(app.Context(RunStore(tmp_path / "state"), []), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED
    ops = effects(fake_world)
    inside = [e["op"] for e in window(ops)]
    assert inside == ["sync", "sync_close", "sync_open", "sync", "sync_close"], inside
    assert [e["op"] for e in ops].count("sync_close") == [e["op"] for e in ops].count("sync_open")
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))


def test_a_failed_quiesce_rolls_back_and_the_open_session_leaves_no_key(tmp_path: Path, fake_world: WorldFile,
                                                                        fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "smtpd stop", "role": "prod", "rc": 1, "stdout": "fault: cannot stop"})
    record = app.start(app.Context(RunStore(tmp_path / "state"), []), app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.ROLLED_BACK and record.error is not None
    ops = [e["op"] for e in effects(fake_world)]
    assert "cutover.sync_open" in record.outputs and "cutover.sync_close" not in record.outputs
    assert ops.count("sync_close") == ops.count("sync_open")  # the failed cutover closed its session
    assert no_sync_key_left(json.loads(fake_world.path.read_text()))


# (pause point, what it exercises, the final pass's sessions: the key a resumed final pass used)
KILLS = [
    ("done:cutover.sync_open", "open journaled, quiesce not begun: resume sweeps the key, opens again before the quiesce"),
    ("begin:cutover.quiesce", "open, quiesce journaled: resume sweeps the key, the final pass opens its own"),
    ("done:cutover.final_sync", "final pass done, session not closed: resume sweeps, the close finds no session"),
    ("begin:cutover.sync_close", "close journaled, not done: the close runs again (idempotent)"),
]


@pytest.mark.parametrize(("point", "why"), KILLS, ids=[p for p, _ in KILLS])
def test_a_kill_between_the_open_and_the_close_leaves_no_key(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                                             point: str, why: str) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at(point, "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "reached")
    left = [g.get("authorized_sync_keys") for g in world_of(fake_world)["guests"].values() if g.get("authorized_sync_keys")]
    assert left, f"{why}: the kill should leave the session's key authorised"
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
    if point == "done:cutover.sync_open":  # the window stayed clean: the new session opened before the quiesce
        assert [e["op"] for e in window(world["effects"])] == ["sync", "sync_close"], why
    record = cli.record()
    assert record["outputs"]["cutover.sync_close"] is not None
