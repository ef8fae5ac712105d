"""Faults on the lab's real components while a run is under way (docs/reliability.md, "Faults").
Each must end in a documented safe state with prod serving and no accepted mail lost:

  SSH to the twin dropped mid-upgrade  -> reconnect, wait for / probe the step, carry on: completed
  twin not back after its reboot       -> bounded wait, abort: prod untouched, staging removed
  rsync killed in the final pass       -> the pass is run again (rsync is idempotent): completed
  libvirtd restarted mid-run           -> the libvirt connection is re-opened: completed
  disk nearly full before the snapshot -> refused before anything is created: aborted, prod untouched

(staging validation failing and post-cutover verify failing are in test_workflow.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from test_workflow import PLAN, Traffic, fresh, images, message_ids, plan_variant, status, upgrader  # noqa: I001
from upgrader.lab import Lab
from upgrader.lab import config as C

pytestmark = pytest.mark.lab


def start(state: Path, plan: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "start", "mailhost",
                             "--plan", str(plan)], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "NO_COLOR": "1"})


def journal(state: Path) -> list[dict[str, Any]]:
    out = []
    for path in state.glob("mailhost/*/journal.jsonl"):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def wait_for(state: Path, kind: str, key: str, proc: subprocess.Popen[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("kind") == kind and e.get("key") == key for e in journal(state)):
            return
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {kind}:{key}"
        time.sleep(0.02)
    raise AssertionError(f"{kind}:{key} not reached in {timeout} s")


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    print(out[-6000:])
    return proc.returncode, out


def prod_intact(lab: Lab, release: str, seen: dict[str, Any] | None) -> None:
    """The machine on the prod segment serves, has the expected release and every accepted mail."""
    assert f"release {release}" in lab.guest_exec("prod", "cat /etc/labos-release").stdout
    assert lab.smtp_probe()["ok"]
    if seen is not None:
        missing = set(seen["accepted"]) - message_ids(lab, "prod")
        assert not missing, f"{len(missing)} of {len(seen['accepted'])} accepted mails lost"


def children_in_netns(pid: int, netns: str) -> list[int]:
    """Processes whose parent is `pid` and that live in the named network namespace (the SSH
    ProxyCommand's `nc` for that segment)."""
    want = os.stat(f"/run/netns/{netns}").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and os.stat(entry / "ns" / "net").st_ino == want:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.full  # 88 s; reconnects on the fakes and the real-sshd adapter tests in CI
def test_ssh_to_the_twin_dropped_mid_upgrade(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    state = tmp_path / "state"
    # a step long enough to cut in the middle of (the lab's real steps take well under a second)
    plan = plan_variant(tmp_path, "  - name: install world and rebuild ports\n    run: labos-update install",
                        "  - name: install world and rebuild ports\n    run: sleep 4 && labos-update install")
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    try:
        proc = start(state, plan)
        wait_for(state, "begin", "upgrade[4]", proc)
        time.sleep(1.0)
        cut = children_in_netns(proc.pid, C.NS_ACC_STG)
        assert cut, "no SSH proxy process of the orchestrator in the staging access namespace"
        for pid in cut:  # the network path to the twin drops the connection
            os.kill(pid, signal.SIGKILL)
        rc, out = finish(proc)
    finally:
        seen = traffic.stop()
    assert rc == 0, out
    record = status(state)
    assert record["phase"] == "completed"
    lost = [e for e in journal(state) if e["kind"] == "connection_lost"]
    assert [e["key"] for e in lost] == ["upgrade[4]"], lost
    print(f"after the drop: {record['outputs']['upgrade[4]']} (probed = the probe waited for the running "
          f"command and found its done-marker; otherwise it ran again)")
    prod_intact(lab, "2", seen)


def test_twin_not_back_after_reboot_aborts_with_prod_untouched(lab: Lab, tmp_path: Path) -> None:
    fresh(lab, ("no-return-after-reboot",))
    state = tmp_path / "state"
    plan = plan_variant(tmp_path, "  - reboot: true\n    timeout: 5m", "  - reboot: true\n    timeout: 40s\n    on_failure: abort")
    started = time.monotonic()
    done = upgrader(state, "start", "mailhost", "--plan", str(plan))
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout
    record = status(state)
    assert record["phase"] == "aborted" and record["error"]["phase"] == "upgrade"
    assert "did not come back" in record["error"]["message"]
    assert took < 40 + 120, f"the bounded wait took {took:.0f} s"
    prod_intact(lab, "1", None)
    assert lab.send_mails(3)["sent"] == 3
    assert {info.name for info, _ in lab.domains()} == {"mailhost"}
    assert images(lab) == {"mailhost.qcow2"}
    print(f"aborted after {took:.0f} s with a 40 s reboot timeout")


KILL_NEXT_RSYNC = """read go || exit 2
n=0
while [ $n -lt 3000 ]; do
    p=$(pidof rsync)
    if [ -n "$p" ]; then kill -9 $p; echo "killed rsync $p"; exit 0; fi
    usleep 10000; n=$((n + 1))
done
echo "no rsync seen"; exit 1
"""


def test_rsync_killed_in_the_final_pass_is_run_again(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    state = tmp_path / "state"
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    client = None
    try:
        proc = start(state, PLAN)
        wait_for(state, "done", "validate_staging", proc)
        # a session on the twin that, once told, kills the next rsync it sees (the final pass's)
        client = lab.target("staging").connect()
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command(KILL_NEXT_RSYNC)
        wait_for(state, "begin", "cutover.quiesce", proc)
        chan.sendall(b"go\n")
        rc, out = finish(proc)
        killer = chan.recv(4096).decode()
        killer_rc = chan.recv_exit_status()
    finally:
        seen = traffic.stop()
        if client is not None:
            client.close()
    assert killer_rc == 0 and "killed rsync" in killer, killer
    assert rc == 0, out
    record = status(state)
    assert record["phase"] == "completed"
    events = (next(state.glob("mailhost/*/events.jsonl"))).read_text()
    assert "running it again" in events
    prod_intact(lab, "2", seen)
    print(f"{killer.strip()}; final sync {record['outputs']['cutover.final_sync']}")


def test_libvirtd_restarted_mid_run(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    state = tmp_path / "state"
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    try:
        proc = start(state, PLAN)
        wait_for(state, "begin", "upgrade[2]", proc)
        before = {info.name for info, _ in lab.domains()}
        new_pid = lab.restart_libvirtd()
        assert {info.name for info, _ in lab.domains()} == before  # the guests kept running
        rc, out = finish(proc)
    finally:
        seen = traffic.stop()
    assert rc == 0, out
    assert status(state)["phase"] == "completed"
    prod_intact(lab, "2", seen)
    print(f"libvirtd restarted as pid {new_pid} during upgrade[2]; run completed")


def test_disk_nearly_full_refused_before_the_snapshot(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    state = tmp_path / "state"
    try:
        filled = lab.fill_disk(leave=200 * 2**20)  # the check wants 256 MiB for overlays
        done = upgrader(state, "start", "mailhost", "--plan", str(PLAN))
        prod_intact(lab, "1", None)  # still serving with the disk nearly full
        assert lab.send_mails(3)["sent"] == 3
    finally:
        lab.unfill_disk()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "disk space: only" in done.stderr and "need 256 MiB" in done.stderr
    assert not list(state.glob("mailhost/2*"))  # refused before the run was created (issue 12)
    assert {info.name for info, _ in lab.domains()} == {"mailhost"}
    assert images(lab) == {"mailhost.qcow2"}
    print(f"filled {filled >> 20} MiB; refused: {done.stderr.strip().splitlines()[1]}")
