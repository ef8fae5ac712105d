"""Twin checkpoints and `upgrader revert` on the fakes: checkpoints before the first upgrade step
and before steps marked `checkpoint: true`; a held run reverted to upgrade[N] gets its twin's
disks exactly as they were before N, runs N.. again and completes; the checkpoints are merged
back before the cutover and nothing leaks. Then the crash matrix of checkpointing, revert and
merge: killed anywhere, the next command finishes it and nothing is done twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgrader import app, app_status, repair
from upgrader.errors import IllegalAction
from upgrader.events import Event
from upgrader.phases import Phase
from upgrader.store import RunStore
from upgrader.testing.crash import Cli, guest, op_counts, world_of
from upgrader.testing.fakes import WorldFile

HAND_MADE = "/root/made-by-hand-after-the-checkpoint"


@pytest.fixture
def plan(fake_plan: Path) -> Path:
    """The fake plan with a checkpoint before upgrade[3] (`rebuild`) too."""
    text = fake_plan.read_text().replace("  - name: rebuild\n", "  - name: rebuild\n    checkpoint: true\n")
    fake_plan.write_text(text)
    return fake_plan


def context(tmp_path: Path, events: list[Event] | None = None) -> app.Context:
    sink = events if events is not None else []
    return app.Context(RunStore(tmp_path / "state"), [sink.append])


def held_in_validation(tmp_path: Path, world: WorldFile, plan: Path) -> app.Context:
    with world.change() as data:
        data["faults"].append("probe:staging")
    ctx = context(tmp_path)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.HELD and record.held is not None and record.held.step == "validate_staging"
    with world.change() as data:  # the operator leaves a file on the twin after the checkpoints
        guest(data, "mailhost-twin")["files"].append(HAND_MADE)
        data["faults"].remove("probe:staging")
    return ctx


def installs(world: dict[str, Any]) -> int:
    return sum(1 for e in world["effects"] if e["op"] == "run" and e["cmd"] == "labos-update install" and e["rc"] == 0)


def clean_after_decommission(world: dict[str, Any]) -> None:
    """As after a run with no failure: the new prod alone, on one flat image, nothing leaked."""
    assert list(world["domains"]) == ["mailhost-twin"]
    twin = world["domains"]["mailhost-twin"]
    assert set(world["images"]) == set(twin["disks"].values())
    assert all(img["backing"] is None for img in world["images"].values())
    assert guest(world, "mailhost-twin")["release"] == "2" and HAND_MADE not in guest(world, "mailhost-twin")["files"]
    assert twin["claim"] is None


def test_checkpoints_before_the_first_step_and_marked_steps(tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    ctx = held_in_validation(tmp_path, fake_world, plan)
    record, rows = repair.checkpoints(ctx, "mailhost")
    assert [row.step for row in rows] == ["upgrade[0]", "upgrade[3]"]
    assert all(row.taken is not None and row.bytes_since is not None for row in rows)
    assert op_counts(world_of(fake_world))["checkpoint"] == 2


def test_revert_restores_the_disks_and_runs_the_steps_again(tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    ctx = held_in_validation(tmp_path, fake_world, plan)
    before = installs(world_of(fake_world))
    record = repair.revert(ctx, "mailhost", "upgrade[3]", "alice")
    assert record.phase == Phase.COMPLETED, record
    world = world_of(fake_world)
    files = guest(world, "mailhost-twin")["files"]
    assert HAND_MADE not in files  # written after the checkpoint: gone
    assert installs(world) == before + 1  # upgrade[3] ran again, upgrade[1] did not
    assert sum(1 for f in files if f.endswith("upgrade_3_.done")) == 1  # its done-marker: gone with the revert, written again
    counts = op_counts(world)
    assert (counts["revert_checkpoint"], counts["merge_checkpoints"], counts["checkpoint"]) == (1, 1, 2)
    entries = RunStore(tmp_path / "state").journal("mailhost", record.run_id)
    rewind = [e for e in entries if e["kind"] == "rewind"]
    assert len(rewind) == 1 and "upgrade[3]" in rewind[0]["keys"] and "upgrade[2]" not in rewind[0]["keys"]
    assert "checkpoint.upgrade[3]" not in rewind[0]["keys"] and "validate_staging" in rewind[0]["keys"]
    assert app.decommission(ctx, "mailhost").phase == Phase.DECOMMISSIONED
    clean_after_decommission(world_of(fake_world))


def test_revert_to_the_first_checkpoint_runs_every_step_again(tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    ctx = held_in_validation(tmp_path, fake_world, plan)
    record = repair.revert(ctx, "mailhost", "upgrade[0]", "alice")
    assert record.phase == Phase.COMPLETED
    world = world_of(fake_world)
    assert installs(world) == 4 and op_counts(world)["checkpoint"] == 3  # upgrade[3]'s checkpoint is taken again
    assert app.decommission(ctx, "mailhost").phase == Phase.DECOMMISSIONED
    clean_after_decommission(world_of(fake_world))


def test_revert_is_refused_where_it_makes_no_sense(tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    ctx = held_in_validation(tmp_path, fake_world, plan)
    with pytest.raises(IllegalAction) as info:
        repair.revert(ctx, "mailhost", "upgrade[2]", "alice")
    assert "no checkpoint was taken before upgrade[2]" in info.value.message
    assert "checkpoints: upgrade[0], upgrade[3]" in (info.value.hint or "")
    with pytest.raises(IllegalAction) as info:
        repair.revert(ctx, "mailhost", "validate", "alice")
    assert "not an upgrade step" in info.value.message
    assert op_counts(world_of(fake_world))["destroy"] == 0  # nothing was touched
    abort = app.abort(ctx, "mailhost")  # abort with checkpoints leaks nothing
    assert abort is not None and abort.phase == Phase.ABORTED
    world = world_of(fake_world)
    assert list(world["domains"]) == ["mailhost"] and list(world["images"]) == ["/fake/mailhost.qcow2"]


def test_revert_needs_a_held_run(tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    ctx = context(tmp_path)
    app.start(ctx, app.StartOptions("mailhost", str(plan)))
    with pytest.raises(IllegalAction):
        repair.revert(ctx, "mailhost", "upgrade[0]", "alice")
    world = world_of(fake_world)
    assert op_counts(world)["merge_checkpoints"] == 1
    assert all("ckpt" not in path for path in world["images"])  # merged back before the cutover


# ------------------------------------------------------------------------------ crash matrix

START = ("start", "mailhost", "--plan", "{plan}")
REVERT = ("revert", "mailhost", "--to", "upgrade[3]", "--yes")
KILL_POINTS: list[tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...], str]] = [
    # (point, killed command, recovery commands, why)
    ("begin:checkpoint.upgrade?0?", START, (("resume", "mailhost"),), "checkpoint begun, not taken"),
    ("during:checkpoint:upgrade?0?", START, (("resume", "mailhost"),), "overlay made, the disk not switched"),
    ("after:checkpoint:upgrade?3?", START, (("resume", "mailhost"),), "taken, not journaled: the probe finds it"),
    ("begin:revert?0?.stop", REVERT, (REVERT,), "revert begun: the same revert again"),
    ("after:destroy:mailhost-twin", REVERT, (("retry", "mailhost"),), "twin stopped: retry finishes the revert"),
    ("during:revert_checkpoint:upgrade?3?", REVERT, (("resume", "mailhost"),), "disks switched, old images not deleted"),
    ("after:revert_checkpoint:upgrade?3?", REVERT, (REVERT,), "reverted, not journaled: the probe sees the new overlay"),
    ("after:start", REVERT, (REVERT,), "reverted twin started, not journaled"),
    ("operator:revert", REVERT, (REVERT,), "rewound, not yet back in upgrade: not reverted twice"),
    ("during:merge_checkpoints", REVERT, (("resume", "mailhost"),), "merging the checkpoints before the cutover"),
    ("after:merge_checkpoints", REVERT, (("resume", "mailhost"),), "merged, not journaled"),
]


@pytest.mark.parametrize(("point", "killed", "recover", "why"), KILL_POINTS,
                         ids=[f"{k[0]}-{p}" for p, k, _, _ in KILL_POINTS])
def test_checkpoint_and_revert_killed_and_recovered(tmp_path: Path, fake_world: WorldFile, plan: Path, point: str,
                                                    killed: tuple[str, ...], recover: tuple[tuple[str, ...], ...],
                                                    why: str) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    fmt = [[a.format(plan=plan) for a in c] for c in (killed, *recover)]
    if killed is REVERT:
        with fake_world.change() as data:
            data["faults"].append("probe:staging")
        assert cli.run(*START[:3], str(plan)).rc == 6
        with fake_world.change() as data:
            guest(data, "mailhost-twin")["files"].append(HAND_MADE)
            data["faults"].remove("probe:staging")
    cli.kill_at(point, *fmt[0], reached=tmp_path / "reached")
    outputs = [cli.run(*command) for command in fmt[1:]]
    assert cli.record()["phase"] == "completed", outputs
    outputs.append(cli.run("decommission", "mailhost", "--yes"))
    assert cli.record()["phase"] == "decommissioned", outputs
    world = world_of(fake_world)
    clean_after_decommission(world)
    counts = op_counts(world)
    reverted = killed is REVERT
    assert counts["clone"] == 1 and counts["snapshot"] == 1
    assert counts["checkpoint"] == 2, counts  # upgrade[3]'s survives a revert to it: never taken twice
    assert counts["revert_checkpoint"] == int(reverted), counts  # killed halfway: finished, not redone
    assert installs(world) == 2 + int(reverted), [e for e in world["effects"] if e["op"] == "run"]


# ------------------------------------------------------------------------- the review's cases


def test_a_failed_merge_holds_and_retry_merges_again(tmp_path: Path, fake_world: WorldFile, plan: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge before the cutover fails (no space for the block commit...): the run holds at
    the end of the pre-sync instead of throwing the upgraded twin away."""
    from upgrader.errors import StepFailed
    from upgrader.testing.fake_checkpoints import FakeCheckpoints

    real = FakeCheckpoints.merge_checkpoints
    calls = []

    def failing_once(self: FakeCheckpoints, domain: str) -> int:
        calls.append(domain)
        if len(calls) == 1:
            raise StepFailed("fake: block commit failed: No space left on device")
        return real(self, domain)

    monkeypatch.setattr(FakeCheckpoints, "merge_checkpoints", failing_once)
    ctx = context(tmp_path)
    record = app.start(ctx, app.StartOptions("mailhost", str(plan)))
    assert record.phase == Phase.HELD and record.held is not None
    assert (record.held.phase, record.held.step) == (Phase.PRESYNC, "checkpoints.merge")
    assert "mailhost-twin" in world_of(fake_world)["domains"]  # the upgraded twin is kept
    with pytest.raises(IllegalAction, match="merging"):
        repair.revert(ctx, "mailhost", "upgrade[0]", "alice")
    assert app.retry(ctx, "mailhost", "alice").phase == Phase.COMPLETED
    assert len(calls) == 2 and all("ckpt" not in p for p in world_of(fake_world)["images"])


def test_an_abort_asked_during_a_revert_aborts_the_run(tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    from upgrader.engine import request_abort
    from upgrader.events import StepBegin

    ctx = held_in_validation(tmp_path, fake_world, plan)
    store = RunStore(tmp_path / "state")
    run_id = store.latest("mailhost").run_id  # type: ignore[union-attr]

    def abort_there(event: Event) -> None:
        if isinstance(event, StepBegin) and event.key == "revert[0].start":
            request_abort(store.run_dir("mailhost", run_id))

    ctx.listeners.append(abort_there)
    record = repair.revert(ctx, "mailhost", "upgrade[3]", "alice")
    assert record.phase == Phase.ABORTED and record.finished
    world = world_of(fake_world)
    assert list(world["domains"]) == ["mailhost"] and list(world["images"]) == ["/fake/mailhost.qcow2"]


def test_an_interrupted_revert_can_be_replaced_by_one_to_another_checkpoint(
        tmp_path: Path, fake_world: WorldFile, plan: Path) -> None:
    ctx = held_in_validation(tmp_path, fake_world, plan)
    with fake_world.change() as data:  # the reverted twin will not answer: the revert stops halfway
        data["faults"].append("ssh:staging")
    with pytest.raises(Exception):  # noqa: B017 - InfraError from the fake's SSH
        repair.revert(ctx, "mailhost", "upgrade[3]", "alice")
    [record] = app_status.status(ctx, "mailhost")
    assert record.phase == Phase.HELD
    shown = Cli(tmp_path / "state", tmp_path / "locks").run("status", "mailhost")
    assert "a revert of the twin to upgrade[3] was interrupted" in shown.out, shown
    assert "upgrader retry mailhost" in shown.out and "skip" not in shown.out
    with fake_world.change() as data:
        data["faults"].remove("ssh:staging")
    record = repair.revert(ctx, "mailhost", "upgrade[0]", "alice")
    assert record.phase == Phase.COMPLETED
    world = world_of(fake_world)
    assert installs(world) == 4  # everything from upgrade[0] ran again
    assert app.decommission(ctx, "mailhost").phase == Phase.DECOMMISSIONED
    clean_after_decommission(world_of(fake_world))
