"""Rollback when things are not as the happy path left them: the new prod dead, decommission
half done, the network never moved, the old VM powered off, an abort asked for too late."""

from __future__ import annotations

import json
from pathlib import Path

from upgrader.testing.crash import Cli, guest, op_counts, world_of
from upgrader.testing.fakes import WorldFile

NEW_PROD_MAIL = {"match": "smtpd start", "role": "prod", "set": {"services": True}, "add_mail": 3}


def completed(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> Cli:
    with fake_world.change() as world:
        world["commands"].insert(0, NEW_PROD_MAIL)
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    done = cli.run("start", "mailhost", "--plan", str(fake_plan))
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    return cli


def test_new_prod_dead_gives_the_network_back_without_the_sync_and_keeps_the_twin(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = completed(tmp_path, fake_world, fake_plan)
    with fake_world.change() as world:  # the new prod crashed
        world["domains"]["mailhost-twin"]["running"] = False
    done = cli.run("rollback", "mailhost", "--yes")
    assert done.rc == 1 and cli.record()["phase"] == "rolled_back", done
    assert "does not answer" in done.out and "may exist only on mailhost-twin" in done.out
    world = world_of(fake_world)
    old = world["domains"]["mailhost"]
    assert all(old["links"].values()) and guest(world, "mailhost")["services"]  # the old VM serves
    twin = world["domains"]["mailhost-twin"]  # kept, stopped, disks and all, on staging
    assert not twin["running"] and set(twin["nics"].values()) == {"stg-net"} and set(twin["disks"].values()) <= set(world["images"])
    assert [e for e in world["effects"] if e["op"] == "sync" and e["source"] == "staging"] == []
    record = cli.record()
    assert any("/var/mail/" in w and "mailhost-twin" in w for w in record["warnings"])
    assert old["claim"] is not None  # kept: the old VM is still on the run's overlay, the twin on its base
    status = cli.run("status", "mailhost")
    assert "may exist only on mailhost-twin" in status.out, status


def test_new_prod_lost_during_the_reverse_sync_goes_on_network_only(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = completed(tmp_path, fake_world, fake_plan)
    cli.kill_at("during:sync:final", "rollback", "mailhost", "--yes", reached=tmp_path / "r")
    with fake_world.change() as world:  # the twin dies while its mail is being copied back
        world["domains"]["mailhost-twin"]["running"] = False
    done = cli.run("resume", "mailhost")
    assert cli.record()["phase"] == "rolled_back", done
    assert "lost during the rollback" in done.out and cli.record()["warnings"]
    world = world_of(fake_world)
    assert all(world["domains"]["mailhost"]["links"].values()) and "mailhost-twin" in world["domains"]


def test_rollback_is_refused_once_decommission_began_and_decommission_finishes(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = completed(tmp_path, fake_world, fake_plan)
    cli.kill_at("after:destroy:mailhost", "decommission", "mailhost", "--yes", reached=tmp_path / "r")
    refused = cli.run("rollback", "mailhost", "--yes")
    assert refused.rc == 2 and "decommissioning mailhost began" in refused.out and "upgrader decommission" in refused.out
    world = world_of(fake_world)
    assert op_counts(world)["move_nic"] == 1 and guest(world, "mailhost-twin")["services"]  # the new prod untouched
    # resume (or run-due) finishes the decommission even though keep_old_for has not passed
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "decommissioned", done


def test_rollback_is_refused_when_the_old_vm_is_gone(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = completed(tmp_path, fake_world, fake_plan)
    with fake_world.change() as world:
        del world["domains"]["mailhost"]
    refused = cli.run("rollback", "mailhost", "--yes")
    assert refused.rc == 2 and "old VM mailhost is gone" in refused.out, refused
    assert cli.record()["phase"] == "completed"


def test_rollback_is_refused_while_the_old_vm_is_powered_off(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Booting it here would start its services before the reverse sync replaces their spool."""
    cli = completed(tmp_path, fake_world, fake_plan)
    with fake_world.change() as world:
        world["domains"]["mailhost"]["running"] = False
    refused = cli.run("rollback", "mailhost", "--yes")
    assert refused.rc == 2 and "not running" in refused.out and "virsh start mailhost" in refused.out, refused
    assert cli.record()["phase"] == "completed" and op_counts(world_of(fake_world))["move_nic"] == 1


def test_no_reverse_sync_when_the_network_never_moved(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Killed as the takeover began (nothing moved yet): files on the twin must not reach the old VM."""
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("begin:cutover.takeover", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    with fake_world.change() as world:
        world["guests"]["g1"]["mail"].append("written-locally-on-the-twin")
    done = cli.run("rollback", "mailhost", "--yes")
    assert cli.record()["phase"] == "rolled_back", done
    world = world_of(fake_world)
    assert [e for e in world["effects"] if e["op"] == "sync" and e["source"] == "staging"] == []
    assert "written-locally-on-the-twin" not in guest(world, "mailhost")["mail"]
    assert all(world["domains"]["mailhost"]["links"].values())


def test_abort_request_that_arrives_after_the_cutover_began_is_refused_out_loud(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """`upgrader abort` saw the run before cutover; by the time the run reads the request it is in it."""
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("enter:cutover", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    run_dir = next(p for p in (tmp_path / "state" / "mailhost").iterdir() if p.is_dir())
    (run_dir / "abort-requested").touch()
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and cli.record()["phase"] == "completed", done
    assert "abort request refused" in done.out and "upgrader rollback mailhost" in done.out
    assert not (run_dir / "abort-requested").exists()
    assert '"kind":"abort_refused"' in (run_dir / "journal.jsonl").read_text()


def test_a_killed_syncs_key_is_swept_by_the_next_resume(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("during:sync:pass", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "r")
    assert guest(world_of(fake_world), "mailhost").get("authorized_sync_keys"), "the fake sync left no key to sweep"
    done = cli.run("resume", "mailhost")
    assert done.rc == 0 and "removed 1 sync key(s)" in done.out, done
    sweeps = [e for e in world_of(fake_world)["effects"] if e["op"] == "sweep_keys"]
    assert sweeps and sweeps[0]["removed"] == 1


def test_rollback_with_the_twin_gone_gives_the_network_back(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Review: give-back needed the twin defined; with it gone the old VM stayed link-down for good."""
    cli = completed(tmp_path, fake_world, fake_plan)
    with fake_world.change() as world:
        del world["domains"]["mailhost-twin"]
    done = cli.run("rollback", "mailhost", "--yes")
    assert cli.record()["phase"] == "rolled_back" and not cli.record()["cleanup_error"], done
    world = world_of(fake_world)
    assert all(world["domains"]["mailhost"]["links"].values()) and guest(world, "mailhost")["services"]


def test_old_vm_unreachable_during_the_reverse_sync_is_retried_not_given_up(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Review: a failure on the old VM's side must not skip the reverse sync while the twin answers."""
    cli = completed(tmp_path, fake_world, fake_plan)
    cli.kill_at("done:rollback.network", "rollback", "mailhost", "--yes", reached=tmp_path / "r")
    with fake_world.change() as world:
        world["domains"]["mailhost"]["running"] = False  # the old VM does not answer for a moment
    done = cli.run("resume", "mailhost")
    assert done.rc == 1 and cli.record()["phase"] == "rolling_back" and cli.record()["cleanup_error"], done
    with fake_world.change() as world:
        world["domains"]["mailhost"]["running"] = True
    done = cli.run("resume", "mailhost")
    assert cli.record()["phase"] == "rolled_back" and not cli.record()["warnings"], done
    world = world_of(fake_world)
    assert set(world["guests"]["g1"]["mail"]) <= set(guest(world, "mailhost")["mail"])  # nothing lost


def test_a_failed_flatten_does_not_block_rollback(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Review: decommission 'began' only when the old VM is touched (its destroy), not at flatten."""
    cli = completed(tmp_path, fake_world, fake_plan)
    with fake_world.change() as world:
        world["domains"]["mailhost-twin"]["running"] = False
        twin = world["domains"].pop("mailhost-twin")
    assert cli.run("decommission", "mailhost", "--yes").rc == 1
    with fake_world.change() as world:
        world["domains"]["mailhost-twin"] = twin
    done = cli.run("rollback", "mailhost", "--yes")
    assert cli.record()["phase"] == "rolled_back", done


def test_run_due_goes_on_past_a_host_with_broken_state(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = completed(tmp_path, fake_world, fake_plan)
    broken = tmp_path / "state" / "aaa-host" / "20261101T000000Z-abcd"
    broken.mkdir(parents=True, mode=0o700)
    (tmp_path / "state" / "aaa-host").chmod(0o700)
    (broken / "run.json").write_text("{not json")
    done = cli.run("run-due")
    # the broken host is reported (exit 7: a host needs an operator); mailhost had nothing due
    # (keep_old_for not over): with -q it says nothing (tests/cli/test_run_due.py has the rest)
    assert done.rc == 7 and "aaa-host" in done.out and "mailhost" not in done.out, done


def test_decommission_again_after_a_kill_between_the_journal_and_run_json(
        tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    """Found by the soak: killed after the journal's transition to decommissioned but before run.json
    was saved, run.json still says completed/parked; the operator types decommission again."""
    cli = completed(tmp_path, fake_world, fake_plan)
    cli.kill_at("enter:decommissioned", "decommission", "mailhost", "--yes", reached=tmp_path / "r")
    run_dir = next(p for p in (tmp_path / "state" / "mailhost").iterdir() if p.is_dir())
    record = json.loads((run_dir / "run.json").read_text())
    record.update(phase="completed", finished=False, parked="old VM mailhost kept until …")
    (run_dir / "run.json").write_text(json.dumps(record))  # as if the process died before saving it
    done = cli.run("decommission", "mailhost", "--yes")
    assert done.rc == 0 and cli.record()["phase"] == "decommissioned" and cli.record()["finished"], done
    assert op_counts(world_of(fake_world))["undefine"] == 1
