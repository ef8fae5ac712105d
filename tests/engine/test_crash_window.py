"""Kill the resume that pre-syncs again before the cutover (issue 12: the run waited for its
approval while mail kept arriving) at every point of that round, then resume: the round goes on
where it was, its passes go on numbering from the pre-sync phase's, nothing is done twice, and
every mail reaches the new prod."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from upgrader.testing.crash import Cli, guest, op_counts, world_of
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

# (`?` for the brackets: fnmatch would read [4] as a class)
# the pre-sync phase runs passes 1-3 on the fake world (40, 8, 1 new mails); the refresh 4 and 5
KILL_POINTS = [
    ("begin:presync.pass?4?", "the round's first pass journaled, not run"),
    ("after:sync:pass", "the round's first pass synced, not journaled"),
    ("done:presync.pass?4?", "boundary: one pass of the round done, it has not converged"),
    ("begin:presync.pass?5?", "the round's second pass journaled, not run"),
    ("done:presync.pass?5?", "the round converged, the decision not journaled"),
    ("done:await_window", "the decision journaled, the transition not"),
]
ONCE = ("snapshot", "clone", "start", "set_link", "move_nic")


@pytest.mark.parametrize(("point", "why"), KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_kill_in_the_presync_before_the_cutover_and_resume(tmp_path: Path, fake_world: WorldFile, point: str, why: str) -> None:
    plan = tmp_path / "approval.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1h") + "approval: required\n")
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    started = cli.run("start", "mailhost", "--plan", str(plan))
    assert started.rc == 0 and cli.record()["parked"].startswith("waiting for approval"), started
    with fake_world.change() as world:  # clients deliver while the run waits
        world["guests"][world["domains"]["mailhost"]["guest"]]["mail"].extend(f"parked-{i}" for i in range(30))
    assert cli.run("approve", "mailhost", "--by", "alice").rc == 0
    reached = cli.kill_at(point, "resume", "mailhost", reached=tmp_path / "reached")
    assert fnmatch.fnmatchcase(reached, point), reached
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done

    world = world_of(fake_world)
    counts = op_counts(world)
    assert {op: counts.get(op, 0) for op in ONCE} == dict.fromkeys(ONCE, 1), why
    outputs = cli.record()["outputs"]
    passes = sorted(int(k[13:-1]) for k in outputs if k.startswith("presync.pass["))
    # a pass killed after its rsync is redone and then moves nothing: the round converges with it
    expected = [1, 2, 3, 4] if point == "after:sync:pass" else [1, 2, 3, 4, 5]
    assert passes == expected, (why, passes)
    assert all(outputs[f"presync.pass[{n}]"]["round"] == "approved" for n in expected[3:]), why
    assert outputs["cutover.final_sync"]["files"] == 0, why
    journal = tmp_path / "state" / "mailhost" / cli.record()["run_id"] / "journal.jsonl"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    done_keys = [e["key"] for e in entries if e.get("kind") == "done" and str(e.get("key")).startswith("presync.pass[")]
    assert sorted(done_keys) == sorted(set(done_keys)) and len(done_keys) == len(expected), (why, done_keys)  # each pass done once
    mail = guest(world, "mailhost-twin")["mail"]
    assert len(mail) == len(set(mail)) == 20 + 40 + 8 + 1 + 30, why
