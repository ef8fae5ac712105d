"""Crash matrix of the held paths: SIGKILL while a run goes into `held`, inside `retry`, `skip` and
an abort from held; the recovery command then finishes, and every side effect happened exactly
once (the failed step: once failed, once after the fix; a skipped step: never again)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from upgrader.testing.crash import CHECKS, Cli, op_counts, world_of
from upgrader.testing.fakes import WorldFile

BROKEN = {"match": "labos-update install", "rc": 1, "stdout": "port mailfilter: build failed"}


@dataclass(frozen=True)
class HeldPath:
    before: tuple[tuple[str, ...], ...]  # run first (to completion), with the world broken
    killed: tuple[str, ...]  # killed at the point; the world is mended before it when `mend_first`
    recover: tuple[tuple[str, ...], ...]
    end: str  # "decommissioned" | "aborted"
    installs_ok: int  # successful runs of `labos-update install` (upgrade[1] and upgrade[3])
    mend_first: bool = True


START = ("start", "mailhost", "--plan", "{plan}")
RETRY = HeldPath((START,), ("retry", "mailhost"), (("resume", "mailhost"),), "decommissioned", 2)
SKIP = HeldPath((START,), ("skip", "mailhost", "--reason", "built by hand"), (("resume", "mailhost"),), "decommissioned", 1)
ABORT = HeldPath((START,), ("abort", "mailhost", "--yes"), (("resume", "mailhost"),), "aborted", 0)

KILL_POINTS: list[tuple[str, HeldPath, str]] = [
    ("holding:upgrade?1?", HeldPath((), START, (("resume", "mailhost"), ("retry", "mailhost")), "decommissioned", 2,
                                    mend_first=False),
     "held journaled, the transition not yet: resume completes the hold (never runs the step unfixed), retry goes on"),
    ("enter:held", HeldPath((), START, (("retry", "mailhost"),), "decommissioned", 2, mend_first=False),
     "held; run.json may say so or not"),
    ("operator:retry", HeldPath((START,), ("retry", "mailhost"), (("retry", "mailhost"),), "decommissioned", 2),
     "retry journaled, still held: retry again"),
    ("enter:upgrade", RETRY, "back in upgrade, the step not begun"),
    ("begin:upgrade?1?", RETRY, "the step begun again, not run"),
    ("after:run:labos-update install", RETRY, "the step ran (marker written), not journaled done: probed, not rerun"),
    ("operator:skip", HeldPath((START,), ("skip", "mailhost", "--reason", "built by hand"),
                               (("skip", "mailhost", "--reason", "built by hand"),), "decommissioned", 1),
     "skip journaled (the step done by hand), still held: skip again writes nothing twice"),
    ("enter:upgrade", SKIP, "skipped, back in upgrade"),
    ("begin:abort.remove_twin", ABORT, "abort from held, removing the twin"),
    ("after:undefine_domain", ABORT, "abort from held, the twin undefined"),
]


def _mend(world: WorldFile) -> None:
    with world.change() as data:
        data["commands"] = [c for c in data["commands"] if c != BROKEN]


@pytest.mark.parametrize(("point", "path", "why"), KILL_POINTS,
                         ids=[f"{' '.join(p.killed[:1])}-{point}" for point, p, _ in KILL_POINTS])
def test_held_path_killed_and_recovered(tmp_path: Path, fake_world: WorldFile, fake_plan: Path, point: str,
                                        path: HeldPath, why: str) -> None:
    with fake_world.change() as data:
        data["commands"].insert(0, dict(BROKEN))
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    args = [[a.format(plan=fake_plan) for a in command] for command in (*path.before, path.killed, *path.recover)]
    for command in args[: len(path.before)]:
        done = cli.run(*command)
        assert done.rc == 6 and cli.record()["phase"] == "held", done
    if path.mend_first:
        _mend(fake_world)
    cli.kill_at(point, *args[len(path.before)], reached=tmp_path / "reached")
    _mend(fake_world)
    outputs = [cli.run(*command) for command in args[len(path.before) + 1:]]
    record = cli.record()
    if path.end == "decommissioned":
        assert record["phase"] == "completed", outputs
        outputs.append(cli.run("decommission", "mailhost", "--yes"))
    record = cli.record()
    assert record["phase"] == path.end and record["finished"], outputs
    world = world_of(fake_world)
    CHECKS[path.end](world)
    installs = [e for e in world["effects"] if e["op"] == "run" and e["cmd"] == "labos-update install"]
    assert sum(1 for e in installs if e["rc"] == 1) == 1, installs  # the failure that held the run
    assert sum(1 for e in installs if e["rc"] == 0) == path.installs_ok, installs
    assert op_counts(world)["clone"] == 1
