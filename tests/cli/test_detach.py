"""`upgrader start --detach` (issue 12, point 8): the run goes on in the background, in its own
session, logging under the state dir; the SIGHUP of a closed SSH session (sent to the parent's
process group) does not reach it. Killed, it shows as `interrupted`; resumed, it completes."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from upgrader import app, app_status
from upgrader.app_status import RunState
from upgrader.store import RunStore

REPO = Path(__file__).resolve().parents[2]


def test_detached_start_survives_the_sessions_sighup(tmp_path: Path, fake_plan: Path) -> None:
    state, reached = tmp_path / "state", tmp_path / "reached"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1",
           "UPGRADER_TEST_PAUSE": "begin:clone.define", "UPGRADER_TEST_PAUSE_FILE": str(reached)}
    # the "SSH session": a process group of its own, as a login shell would have
    parent = subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "-q", "start",
                               "mailhost", "--plan", str(fake_plan), "--detach"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 0, out
    found = re.search(r"pid (\d+), log (\S+)", out)
    assert found and "`upgrader status mailhost` follows it" in out, out
    child, log = int(found.group(1)), Path(found.group(2))
    try:
        assert log.parent == state / "mailhost" and log.name.startswith("detached-")
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert os.getsid(child) == child and os.getpgid(child) != parent.pid  # a session of its own
        deadline = time.monotonic() + 60
        while not reached.exists():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        try:
            os.killpg(parent.pid, signal.SIGHUP)  # the SSH session closes
        except ProcessLookupError:
            pass  # the parent's group is gone already: nothing there is the child
        time.sleep(0.3)
        os.kill(child, 0)  # still alive
        ctx = app.Context(RunStore(state))
        [status] = app_status.states(ctx, "mailhost")
        assert status.state is RunState.ACTIVE and status.holder is not None and status.holder.pid == child

        os.kill(child, signal.SIGKILL)  # now really killed (the OOM killer, a reboot)
        for _ in range(100):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("child did not die")
        [status] = app_status.states(ctx, "mailhost")
        assert status.state is RunState.INTERRUPTED and status.killed
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    env.pop("UPGRADER_TEST_PAUSE")
    done = subprocess.run([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "-q", "resume", "mailhost"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [status] = app_status.states(app.Context(RunStore(state)), "mailhost")
    assert status.record.phase.value == "completed" and status.state is RunState.PARKED


def test_a_detached_start_with_a_bad_plan_is_refused_before_detaching(tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "-q", "start", "mailhost", "--plan"]
    done = subprocess.run([*cmd, str(tmp_path / "missing.yml"), "--detach"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "missing.yml" in done.stderr and not (state / "mailhost").exists(), done


def test_the_detached_log_makes_a_fresh_state_root_private(tmp_path: Path) -> None:
    from upgrader.cli.detach import detached_log

    root = tmp_path / "new" / "state"
    log = detached_log(root, "mailhost")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
