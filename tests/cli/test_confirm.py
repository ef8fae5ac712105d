"""`abort`, `rollback` and `decommission` ask on a terminal, with what goes; `--yes` skips the
question; anything but a terminal without `--yes` is refused (exit 2) with the hint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cli_helpers import run
from upgrader.cli import confirm
from upgrader.testing.fakes import WorldFile


def _phase(capsys: pytest.CaptureFixture[str], state: Path) -> str:
    code, out = run(capsys, "--state-dir", str(state), "status", "mailhost", "--json")
    assert code == 0, out
    return str(json.loads(out)["runs"][0]["phase"])


def _held(capsys: pytest.CaptureFixture[str], state: Path, world: WorldFile, plan: Path) -> None:
    with world.change() as data:
        data["commands"].insert(0, {"match": "labos-update install", "rc": 1})
    assert run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(plan))[0] == 6


@pytest.mark.parametrize("command", ["rollback", "decommission"])
def test_not_a_terminal_without_yes_is_refused_and_changes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                   fake_plan: Path, command: str) -> None:
    state = tmp_path / "state"
    assert run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    code, out = run(capsys, "--state-dir", str(state), command, "mailhost")
    assert code == 2 and "stdin is not a terminal" in out and f"upgrader {command} mailhost --yes" in out, out
    assert _phase(capsys, state) == "completed"


def test_abort_not_a_terminal_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                      fake_plan: Path) -> None:
    state = tmp_path / "state"
    _held(capsys, state, fake_world, fake_plan)
    code, out = run(capsys, "--state-dir", str(state), "abort", "mailhost")
    assert code == 2 and "--yes" in out, out
    assert _phase(capsys, state) == "held"


def test_terminal_abort_says_what_goes_and_no_changes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              fake_world: WorldFile, fake_plan: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    _held(capsys, state, fake_world, fake_plan)
    monkeypatch.setattr(confirm, "interactive", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, out = run(capsys, "--state-dir", str(state), "abort", "mailhost")
    assert code == 1 and "not confirmed: nothing was changed" in out, out
    assert "the twin mailhost-twin and its disks (vda: /fake/mailhost.mailhost-twin.qcow2) are removed" in out
    assert "of work on it are lost" in out and "go on?" in out
    assert _phase(capsys, state) == "held"


def test_terminal_yes_goes_on(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    assert run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    monkeypatch.setattr(confirm, "interactive", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out = run(capsys, "--state-dir", str(state), "decommission", "mailhost")
    assert code == 0, out
    assert "mailhost and its disks (vda: /fake/mailhost.qcow2) are deleted" in out
    assert "a rollback is impossible afterwards" in out
    assert _phase(capsys, state) == "decommissioned"


def test_terminal_rollback_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    assert run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    monkeypatch.setattr(confirm, "interactive", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, out = run(capsys, "--state-dir", str(state), "rollback", "mailhost")
    assert code == 1 and "the network goes back to the old VM mailhost" in out and "mailhost-twin" in out, out
    assert _phase(capsys, state) == "completed"


def test_nothing_asked_for_a_run_the_command_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     fake_plan: Path) -> None:
    """The command's own refusal, not a question, for a run in the wrong phase or no run at all."""
    state = tmp_path / "state"
    assert run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    code, out = run(capsys, "--state-dir", str(state), "abort", "mailhost")
    assert code == 2 and "cannot abort a run in phase completed" in out and "terminal" not in out, out
    code, out = run(capsys, "--state-dir", str(state), "decommission", "ghost")
    assert code == 2 and 'no runs for host "ghost"' in out, out
