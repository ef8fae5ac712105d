"""Kill `upgrader start` (a real subprocess) with SIGKILL at step boundaries and inside steps,
then `upgrader resume`: the run completes and every side effect happened exactly once.

The kill points are test hooks (upgrader/testing/hooks.py): the process pauses at the point and
this test SIGKILLs it from outside, like an OOM killer or a power cut would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.testing.crash import Cli, guest, no_client_hold, op_counts, world_of
from upgrader.testing.fakes import WorldFile

# (pause point, what it exercises)
KILL_POINTS = [
    ("begin:preflight", "boundary: nothing done yet"),
    ("begin:snapshot", "journaled begin, snapshot not taken -> probe says no, take it"),
    ("after:snapshot", "inside: snapshot taken, journal does not know -> probe finds it"),
    ("enter:clone", "boundary after checkpoint"),
    ("after:clone_overlays", "inside: twin's overlay created, domain not defined (found on the lab)"),
    ("after:clone", "inside: twin defined, not journaled"),
    ("after:start", "inside: twin started, not journaled"),
    ("before:run:labos-update fetch", "inside: command not run yet"),
    ("after:run:labos-update install", "inside: command done + marker, journal does not know"),
    ("after:reboot", "inside a reboot: boot id changed, not journaled"),
    ("done:upgrade?3?", "boundary between upgrade steps (? : fnmatch would read [3] as a class)"),
    ("after:sync:pass", "inside a pre-sync pass"),
    ("after:run@staging:/etc/init.d/smtpd stop", "inside the pre-sync's rehearsal: the twin's services stopped"),
    ("begin:presync.rehearse.service_start", "rehearsal: journaled begin, the twin's services still stopped"),
    ("done:presync.rehearse.service_start", "boundary: rehearsal timed, forecast not journaled"),
    ("enter:cutover", "boundary: window passed"),
    ("after:sync_open:session", "inside cutover: the sync session's key authorised, sync_open not journaled"),
    ("after:hold_clients:mailhost", "inside cutover: prod's NIC held, not journaled -> the probe finds it"),
    ("done:cutover.hold_clients", "boundary: clients held, prod not quiesced yet (it still serves open connections)"),
    ("after:run@prod:/etc/init.d/smtpd stop", "inside cutover: prod held and quiesced"),
    ("during:sync:final", "inside cutover: inside the session's final pass, its key authorised"),
    ("after:sync:final", "inside cutover: final sync done"),
    ("done:cutover.sync_close", "inside cutover: the key revoked on prod, takeover not begun"),
    ("after:set_link:mailhost", "inside takeover: old VM link down, twin not moved"),
    ("after:move_nic:prod-net", "inside takeover: twin moved"),
    ("begin:cutover.release_clients", "service back: the release journaled, the old VM still held"),
    ("after:release_clients:mailhost", "inside the release: the NIC released, the filter still defined"),
    ("begin:cutover.persist_nics", "after the window: moved live only, the definitions not yet written"),
    ("after:persist_link:mailhost", "inside persist_nics: the old VM's definition written, the twin's not"),
    ("done:verify", "boundary: verified"),
    ("after:undefine_domain", "inside decommission: old VM undefined, its images not deleted (found on the lab)"),
    ("after:undefine", "inside decommission: old VM undefined"),
]

DECOMMISSION_POINTS = {"after:undefine_domain", "after:undefine"}  # reached by `upgrader decommission`

ONCE = ("snapshot", "clone", "start", "reboot", "set_link", "move_nic", "persist_link", "persist_nic", "undefine",
        "flatten", "define_client_hold", "hold_clients", "release_clients", "undefine_client_hold")


def upgrader(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "upgrader.cli.main", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process ended (rc {proc.returncode}) before reaching the kill point:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kill point not reached in time")
        time.sleep(0.02)


@pytest.mark.parametrize(("point", "why"), KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_kill_and_resume(tmp_path: Path, fake_world: WorldFile, fake_plan: Path, point: str, why: str) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    reached = tmp_path / "reached"
    if point in DECOMMISSION_POINTS:  # start parks at completed (keep_old_for); decommission is killed
        assert cli.run("start", "mailhost", "--plan", str(fake_plan)).rc == 0
        cli.kill_at(point, "decommission", "mailhost", "--yes", reached=reached)
        done = cli.run("resume", "mailhost")  # decommission began: resume only goes forward
        assert done.rc == 0, done
    else:
        cli.kill_at(point, "start", "mailhost", "--plan", str(fake_plan), reached=reached)
        done = cli.run("resume", "mailhost")
        assert done.rc == 0 and cli.record()["phase"] == "completed", done
        no_client_hold(world_of(fake_world))  # the old VM still runs here: nothing left held on it
        done = cli.run("decommission", "mailhost", "--yes")
        assert done.rc == 0, done

    world = world_of(fake_world)
    counts = op_counts(world)
    assert {op: counts.get(op, 0) for op in ONCE} == {
        "snapshot": 1, "clone": 1, "start": 1, "reboot": 2, "set_link": 1, "move_nic": 1, "persist_link": 1,
        "persist_nic": 1, "undefine": 1, "flatten": 1,
        "define_client_hold": 1, "hold_clients": 1, "release_clients": 1, "undefine_client_hold": 1,
    }, why
    no_client_hold(world)
    assert counts["set_claim"] == 1 and counts["release_claim"] == 1, why
    commands = [e["cmd"] for e in world["effects"] if e["op"] == "run" and e["role"] == "staging" and "labos-update" in e["cmd"]]
    assert commands == ["labos-update fetch", "labos-update install", "labos-update install"], why
    # the end state: one domain (the new prod) on the production network, release 2, all mail, no claim left
    assert list(world["domains"]) == ["mailhost-twin"]
    twin = world["domains"]["mailhost-twin"]
    assert set(twin["nics"].values()) == {"prod-net"} and twin["claim"] is None
    assert "config" not in twin, why  # its persistent definition is where it serves (fake_nics.py)
    g = guest(world, "mailhost-twin")
    assert g["release"] == "2" and g["services"]
    assert len(set(g["mail"])) == len(g["mail"]) == 20 + 40 + 8 + 1
    assert all(img["backing"] is None for img in world["images"].values())
    assert not [g for g in world["guests"].values() if g.get("authorized_sync_keys") or g.get("sync_key_pairs")], why
    assert set(world["images"]) == set(twin["disks"].values()), "the old VM's images must be gone"
    # the run's own record agrees
    record = cli.record()
    assert record["phase"] == "decommissioned" and record["finished"]


def test_abort_path_killed_inside_merge_back(tmp_path: Path, fake_world: WorldFile, abort_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update install", "rc": 1})
    state, reached = tmp_path / "state", tmp_path / "reached"
    proc = upgrader("--state-dir", str(state), "-q", "start", "mailhost", "--plan", str(abort_plan),
                    env={"UPGRADER_TEST_PAUSE": "after:merge_back", "UPGRADER_TEST_PAUSE_FILE": str(reached)})
    wait_for(reached, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    resumed = upgrader("--state-dir", str(state), "-q", "resume", "mailhost")
    out, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == 1, out  # the run ended aborted: a failed run
    world = json.loads(fake_world.path.read_text())
    assert [e["op"] for e in world["effects"]].count("merge_back") == 1
    assert list(world["domains"]) == ["mailhost"]
    assert list(world["images"]) == ["/fake/mailhost.qcow2"]


def test_concurrent_starts_exactly_one_proceeds(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    state, reached = tmp_path / "state", tmp_path / "reached"
    first = upgrader("--state-dir", str(state), "-q", "start", "mailhost", "--plan", str(fake_plan),
                     env={"UPGRADER_TEST_PAUSE": "begin:clone.define", "UPGRADER_TEST_PAUSE_FILE": str(reached)})
    wait_for(reached, first)
    second = upgrader("--state-dir", str(state), "-q", "start", "mailhost", "--plan", str(fake_plan))
    out, _ = second.communicate(timeout=60)
    first.kill()
    first.wait()
    assert second.returncode == 3, out
    assert f"locked by pid {first.pid}" in out and "since" in out
    world = json.loads(fake_world.path.read_text())
    assert [e["op"] for e in world["effects"]].count("snapshot") == 1


def test_status_names_the_clients_a_killed_cutover_left_held(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    cli = Cli(tmp_path / "state", tmp_path / "locks")
    cli.kill_at("done:cutover.hold_clients", "start", "mailhost", "--plan", str(fake_plan), reached=tmp_path / "reached")
    shown = cli.run("status", "mailhost")
    assert "clients held on mailhost:25" in " ".join(shown.out.split()), shown
    for command in (("status", "--json"), ("status", "mailhost", "--json"), ("list", "--json")):
        runs = json.loads(cli.run(*command).out)["runs"]
        assert runs[-1]["client_hold"] == "mailhost:25", command
    assert world_of(fake_world)["client_holds"] == {"mailhost": {"52:54:00:12:34:56": f"upgrader-hold-{cli.record()['run_id']}"}}
    assert cli.run("resume", "mailhost").rc == 0
    no_client_hold(world_of(fake_world))
    assert "clients held" not in cli.run("status", "mailhost").out
    assert json.loads(cli.run("status", "mailhost", "--json").out)["runs"][0]["client_hold"] is None
