"""One VM, one run: the claim is on the VM, not on the HOST name or the state dir."""

from __future__ import annotations

import time
from pathlib import Path

from upgrader import app
from upgrader.phases import Phase
from upgrader.ports import Claim
from upgrader.store import RunStore
from upgrader.testing.crash import Cli, op_counts, world_of
from upgrader.testing.fakes import FakeHypervisor, WorldFile


def test_two_names_for_one_vm_are_refused_while_running_and_after_a_crash(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    a = Cli(tmp_path / "state", tmp_path / "locks")
    b_same_dir = Cli(tmp_path / "state", tmp_path / "locks")
    b_other_dir = Cli(tmp_path / "elsewhere", tmp_path / "locks")
    proc = a.popen("start", "mailhost", "--plan", str(fake_plan),
                   env={"UPGRADER_TEST_PAUSE": "begin:clone.define", "UPGRADER_TEST_PAUSE_FILE": str(tmp_path / "r")})
    try:
        while not (tmp_path / "r").exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.02)
        # while A runs: the machine-wide VM lock (by UUID) names A's pid
        for cli in (b_same_dir, b_other_dir):
            done = cli.run("start", "mailhost.example.org", "--plan", str(fake_plan))
            assert done.rc == 3 and f"locked by pid {proc.pid}" in done.out and "mailhost (" in done.out, done
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    # A died: no lock any more, but the claim on the VM names A's run, wherever B keeps its state
    run_a = a.record()["run_id"]
    for cli in (b_same_dir, b_other_dir):
        done = cli.run("start", "mailhost.example.org", "--plan", str(fake_plan))
        assert done.rc == 3 and f"claimed by run {run_a} of host 'mailhost'" in done.out and "virsh metadata" in done.out, done
    # A resumes and finishes; the VM is free again after decommission
    assert a.run("resume", "mailhost").rc == 0
    assert a.run("decommission", "mailhost", "--yes").rc == 0
    world = world_of(fake_world)
    assert op_counts(world)["clone"] == 1 and list(world["domains"]) == ["mailhost-twin"]
    assert world["domains"]["mailhost-twin"]["claim"] is None


def test_a_domain_of_the_twins_name_that_is_not_ours_is_never_adopted_or_destroyed(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Killed with clone.define in doubt; meanwhile somebody else defined a domain of that name."""
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("begin:clone.define", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    with fake_world.change() as world:
        world["domains"]["mailhost-twin"] = {"uuid": "0000-foreign", "running": True, "disks": {"vda": "/fake/other.qcow2"},
                                             "nics": {"52:54:00:99:99:99": "prod-net"}, "links": {"52:54:00:99:99:99": True},
                                             "guest": "g0", "claim": None}
        world["images"]["/fake/other.qcow2"] = {"size": 1, "backing": None}
    held = cli.run("resume", "mailhost")  # clone.define fails: held, the foreign domain untouched
    assert held.rc == 6 and cli.record()["phase"] == "held", held
    assert world_of(fake_world)["domains"]["mailhost-twin"]["uuid"] == "0000-foreign"
    done = cli.run("abort", "mailhost", "--yes")
    assert done.rc == 0 and cli.record()["phase"] == "aborted", done  # the operator's abort: done as asked
    assert "left mailhost-twin (uuid 0000-foreign) alone" in done.out
    world = world_of(fake_world)
    assert world["domains"]["mailhost-twin"]["uuid"] == "0000-foreign" and world["domains"]["mailhost-twin"]["running"]
    assert "/fake/other.qcow2" in world["images"]
    assert world["domains"]["mailhost"]["disks"] == {"vda": "/fake/mailhost.qcow2"}  # ours was still merged back


def test_start_refuses_a_vm_claimed_by_another_controller(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    FakeHypervisor(fake_world).set_claim("mailhost", Claim("20261101T000000Z-abcd", "mail", "ctl2", "/srv/state", "2026-11-01"))
    ctx = app.Context(RunStore(tmp_path / "state"))
    try:
        app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    except app.BusyError as exc:
        assert "claimed by run 20261101T000000Z-abcd of host 'mail' (controller ctl2, state dir /srv/state" in exc.message
    else:
        raise AssertionError("a claimed VM was started")
    assert ctx.store.runs("mailhost") == [] and op_counts(world_of(fake_world))["snapshot"] == 0


def test_the_twin_carries_the_claim_until_decommission(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    ctx = app.Context(RunStore(tmp_path / "state"))
    record = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert record.phase == Phase.COMPLETED and record.vm is not None
    hv = FakeHypervisor(fake_world)
    for domain in ("mailhost", "mailhost-twin"):
        claim = hv.claim_of(domain)
        assert claim is not None and claim.run_id == record.run_id and claim.state_dir == str((tmp_path / "state").resolve())
    app.decommission(ctx, "mailhost")
    assert hv.claim_of("mailhost-twin") is None
