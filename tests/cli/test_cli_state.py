"""The CLI on missing, unsafe, full or read-only state: exit 4 with the message and a hint,
never "no runs" and never 70 "internal error"."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from upgrader import app
from upgrader.errors import UnsafeState
from upgrader.events import RunEnded, RunStarted
from upgrader.phases import Phase
from upgrader.record import RunRecord
from upgrader.store import RunStore
from upgrader.ui import EventLog

from cli_helpers import REPO, run


def assert_exit_4(code: int, out: str, needle: str) -> None:
    assert code == 4, out
    assert needle in out, out
    assert "hint:" in out and "Traceback" not in out and "internal error" not in out, out
    assert "no runs" not in out, out


def finished_run(tmp_path: Path, fake_plan: Path) -> tuple[Path, Path]:
    state = tmp_path / "state"
    record = app.start(app.Context(RunStore(state)), app.StartOptions("mailhost", str(fake_plan)))
    return state, state / "mailhost" / record.run_id


@pytest.mark.parametrize("damage", ["deleted", "directory"])
def test_missing_run_json_status_list_show_exit_4(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  fake_plan: Path, damage: str) -> None:
    state, run_dir = finished_run(tmp_path, fake_plan)
    (run_dir / "run.json").unlink()
    if damage == "directory":
        (run_dir / "run.json").mkdir()
    for args in (["status"], ["status", "mailhost"], ["list"], ["show", "mailhost"]):
        code, out = run(capsys, "--state-dir", str(state), *args)
        assert_exit_4(code, out, "run.json")
    code, out = run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))
    assert_exit_4(code, out, "run.json")  # no second run beside a forgotten one (finding 7)


def test_missing_journal_show_exit_4(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state, run_dir = finished_run(tmp_path, fake_plan)
    (run_dir / "journal.jsonl").unlink()
    code, out = run(capsys, "--state-dir", str(state), "show", "mailhost")
    assert_exit_4(code, out, "journal.jsonl is missing")


def test_full_state_dir_exit_4(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, out = run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))
    assert_exit_4(code, out, "No space left on device")
    assert f"cannot write {state}" in out


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_writable_state_dir_exit_4(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path, mode: int) -> None:
    state, _ = finished_run(tmp_path, fake_plan)
    state.chmod(mode)
    code, out = run(capsys, "--state-dir", str(state), "status")
    assert_exit_4(code, out, "writable by others")
    assert f"chmod 700 {state}" in out


def _run_dir(tmp_path: Path) -> Path:
    store = RunStore(tmp_path / "state")
    record = RunRecord(run_id="20261124T201500Z-3f9a", host="mailhost", plan_path="p.yml", plan_sha256="ab" * 32)
    store.create(record)
    return store.run_dir("mailhost", record.run_id)


def test_events_log_is_private(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    old = os.umask(0)
    try:
        log = EventLog(tmp_path / "state")
        log(RunStarted("mailhost", run_dir.name, Phase.PREFLIGHT, False))
        log(RunEnded(Phase.PREFLIGHT, False, True))
    finally:
        os.umask(old)
    path = run_dir / "events.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().splitlines()) == 2


def test_events_log_symlink_refused(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run_dir / "events.jsonl").symlink_to(victim)
    with pytest.raises(UnsafeState):
        EventLog(tmp_path / "state")(RunStarted("mailhost", run_dir.name, Phase.PREFLIGHT, False))
    assert victim.read_text() == "precious\n"


def test_debug_log_private_and_never_through_a_link(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    fake_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import upgrader.app

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(upgrader.app, "start", boom)
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        code, out = run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))
    finally:
        os.umask(old)
    assert code == 70
    (log,) = state.glob("debug-*.log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and "RuntimeError: boom" in log.read_text()

    state.chmod(0o777)  # a dir others can write: no debug log there (they could plant links)
    code, out = run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))
    assert code == 70 and "could not write a debug log" in out
    assert len(list(state.glob("debug-*.log"))) == 1


@pytest.fixture
def read_only_state(tmp_path: Path) -> object:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir(mode=0o700)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "state").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        yield mnt / "state"
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def test_read_only_state_dir_subprocess_exit_4(tmp_path: Path, fake_plan: Path, read_only_state: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(read_only_state), "start", "mailhost",
         "--plan", str(fake_plan)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200"},
    )
    out = done.stdout + done.stderr
    assert_exit_4(done.returncode, out, f"cannot write {read_only_state}: Read-only file system")
    assert "remount" in out
