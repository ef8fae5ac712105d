"""SIGTERM is handled like Ctrl-C (finally blocks run, exit 130 with the resume hint), and an
interrupt during the CLI's imports exits 130 without a traceback (review findings 18-22)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upgrader.testing.fakes import WorldFile

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200"}


def upgrader(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", *args], env={**ENV, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"ended (rc {proc.returncode}) before the pause point:\n{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("pause point not reached in time")
        time.sleep(0.02)


@pytest.mark.parametrize(("signum", "said"), [(signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGINT, "interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_exits_130_and_resume_finishes(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                                      signum: int, said: str) -> None:
    state, reached = tmp_path / "state", tmp_path / "reached"
    proc = upgrader("--state-dir", str(state), "-q", "start", "mailhost", "--plan", str(fake_plan),
                    env={"UPGRADER_TEST_PAUSE": "begin:clone.define", "UPGRADER_TEST_PAUSE_FILE": str(reached)})
    try:
        wait_for(reached, proc)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, out
    assert said in out and "`upgrader resume mailhost` continues" in out, out
    assert "Traceback" not in out, out
    lock = state / "mailhost" / ".lock"
    assert lock.read_text() == "", "the lock's `finally` (release) did not run"

    done = subprocess.run([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "-q", "resume",
                           "mailhost"], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    effects = [e["op"] for e in json.loads(fake_world.path.read_text())["effects"]]
    assert effects.count("snapshot") == 1 and effects.count("clone") == 1


# Sends SIGINT/SIGTERM to itself while the CLI imports MODULE (deterministic: a meta path finder
# fires it), then runs the CLI like `python -m upgrader.cli.main ARGS`. `upgrader.config` is
# imported with `upgrader.cli.main` itself; `upgrader.app` only when a subcommand that needs it
# runs (lazily, inside main()).
DURING_IMPORT = """
import os, runpy, signal, sys

SIGNUM, MODULE, ARGS = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

class Interrupter:
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            os.kill(os.getpid(), SIGNUM)
        return None

sys.meta_path.insert(0, Interrupter())
sys.argv = ["upgrader", *ARGS]
runpy.run_module("upgrader.cli.main", run_name="__main__")
print("not interrupted")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(("module", "args"), [("upgrader.config", ["--version"]), ("upgrader.app", ["start", "h", "--plan", "p.yml"])],
                         ids=["main-imports", "lazy-subcommand-import"])
def test_signal_during_imports_no_traceback(signum: int, module: str, args: list[str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", DURING_IMPORT, str(int(signum)), module, "--state-dir",
                           str(tmp_path / "state"), *args], env=ENV, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 130, out
    said = "terminated (SIGTERM)" if signum == signal.SIGTERM and module == "upgrader.app" else "interrupted"
    assert said in done.stderr and "Traceback" not in out and "not interrupted" not in out, out
    assert "upgrader resume" not in out  # no run was at work: nothing to resume


def test_main_restores_signal_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    from upgrader.cli.main import main

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(SystemExit):
        main(["--version"])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_ctrl_c_on_a_terminal_prints_the_resume_hint_below_the_live_display(tmp_path: Path, fake_plan: Path) -> None:
    """On a terminal the live phase list is running when Ctrl-C comes: it is stopped first, so the
    message is neither printed into it nor wiped with it (found: nothing showed on a terminal)."""
    import pty

    state, reached = tmp_path / "state", tmp_path / "reached"
    master, slave = pty.openpty()
    env = {**ENV, "UPGRADER_TEST_PAUSE": "begin:clone.define", "UPGRADER_TEST_PAUSE_FILE": str(reached),
           "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "start", "mailhost",
                             "--plan", str(fake_plan)], env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while not reached.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reached.exists(), "pause point not reached"
        proc.send_signal(signal.SIGINT)
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    text = output.decode(errors="replace")
    assert proc.returncode == 130, text
    tail = text[text.rfind("\x1b"):]  # after the last escape sequence (the live display's clean-up)
    assert "interrupted — `upgrader resume mailhost` continues from the last checkpoint" in tail, repr(text[-500:])
