"""The command line by exit code and message: in-process (main()) and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import REPO, run


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "--help")
    assert code == 0
    for name in ("start", "resume", "status", "list", "show", "abort", "rollback", "decommission", "plan"):
        assert f"  {name} " in out


def _playbooks_with_keys(tmp_path: Path) -> Path:
    """A copy of playbooks/ with the key and known_hosts files freebsd7.yml names (not shipped)."""
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "freebsd7.yml").write_text((REPO / "playbooks" / "freebsd7.yml").read_text())
    (books / "keys").mkdir()
    for name in ("upgrader_ed25519", "known_hosts"):
        (books / "keys" / name).write_text("")
    return books


def test_plan_check_ok(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _playbooks_with_keys(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "playbooks/freebsd7.yml")
    assert code == 0 and "ok" in out


def test_plan_check_refuses_missing_key_files(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the shipped example names keys/ files next to it that are not shipped
    code, out = run(capsys, "plan", "check", "playbooks/freebsd7.yml")
    assert code == 2
    assert f"ssh.prod.key: {REPO}/playbooks/keys/upgrader_ed25519: no such file" in out
    assert "ssh.staging.known_hosts" in out


def test_plan_check_bare_name_found_in_playbooks(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    _playbooks_with_keys(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _ = run(capsys, "plan", "check", "freebsd7.yml")
    assert code == 0


def test_plan_check_wrong_type_exit_2_with_location(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = (REPO / "playbooks/freebsd7.yml").read_text().replace("reboot: true", 'reboot: "yes please"', 1)
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "yes please" in l)
    code, out = run(capsys, "plan", "check", str(bad))
    assert code == 2
    assert f"{bad}:{line}:" in out and 'reboot: expected true/false, got "yes please"' in out
    assert "Traceback" not in out


def test_plan_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "nope.yml")
    assert code == 2 and "not found" in out and "hint" in out


def test_plan_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "plan", "schema")
    assert code == 0 and "source" in json.loads(out)["properties"]


def test_dry_run_names_every_phase_and_touches_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    state = tmp_path / "state"
    code, out = run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", "playbooks/freebsd7.yml", "--dry-run")
    assert code == 0
    for phase in ("preflight", "snapshot", "clone", "upgrade", "validate_staging", "presync", "await_window", "cutover", "verify", "completed", "decommissioned"):
        assert phase in out
    assert "freebsd-update -r 7.0-RELEASE upgrade" in out
    assert not state.exists()


def test_unknown_host(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, "--state-dir", str(tmp_path), "resume", "ghost")
    assert code == 2 and 'no runs for host "ghost"' in out and "hint" in out


def test_bad_host_name(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    code, out = run(capsys, "--state-dir", str(tmp_path), "start", "../etc", "--plan", str(fake_plan))
    assert code == 2 and "Traceback" not in out


def test_start_status_show_list(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = str(tmp_path / "state")
    code, out = run(capsys, "--state-dir", state, "start", "mailhost", "--plan", str(fake_plan))
    assert code == 0, out
    assert "completed" in out and "kept until" in out
    code, out = run(capsys, "--state-dir", state, "decommission", "mailhost", "--yes")
    assert code == 0 and "decommissioned" in out and "bytes freed" in out, out
    code, out = run(capsys, "--state-dir", state, "status", "mailhost", "--json")
    assert code == 0 and json.loads(out)["runs"][0]["phase"] == "decommissioned"
    code, out = run(capsys, "--state-dir", state, "show", "mailhost")
    assert code == 0 and "begin" in out and "snapshot" in out
    code, out = run(capsys, "--state-dir", state, "list")
    assert code == 0 and "mailhost" in out
    code, out = run(capsys, "--state-dir", state, "resume", "mailhost")
    assert code == 2 and "no unfinished run" in out


def test_failed_run_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world, abort_plan: Path) -> None:  # type: ignore[no-untyped-def]
    with fake_world.change() as world:
        world["faults"].append("probe:staging")
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "start", "mailhost", "--plan", str(abort_plan))
    assert code == 1 and "aborted" in out and "validate_staging" in out


def test_held_run_exits_6_and_says_what_to_run(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world, fake_plan: Path) -> None:  # type: ignore[no-untyped-def]
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update install", "rc": 1, "stdout": "port mailfilter: build failed"})
    state = str(tmp_path / "state")
    code, out = run(capsys, "--state-dir", state, "start", "mailhost", "--plan", str(fake_plan))
    assert code == 6 and "held at upgrade[1]" in out
    code, out = run(capsys, "--state-dir", state, "status", "mailhost")
    assert code == 0 and "held at upgrade[1] (install-1): exited 1" in out and "port mailfilter: build failed" in out
    for command in ("upgrader ssh mailhost --twin", "upgrader retry mailhost", "upgrader skip mailhost --reason TEXT",
                    "upgrader abort mailhost"):
        assert command in out
    code, out = run(capsys, "--state-dir", state, "status")
    assert code == 0 and "held" in out


def test_corrupt_state_exit_4(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))
    run_json = next(p for p in (state / "mailhost").iterdir() if p.is_dir()) / "run.json"
    run_json.write_text("{not json")
    code, out = run(capsys, "--state-dir", str(state), "status", "mailhost")
    assert code == 4 and "hint" in out and "Traceback" not in out


def test_internal_error_writes_debug_log(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import upgrader.app

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(upgrader.app, "start", boom)
    monkeypatch.setenv("UPGRADER_STATE_DIR", str(tmp_path / "state"))
    code, out = run(capsys, "start", "mailhost", "--plan", str(fake_plan))
    assert code == 70 and "internal error" in out
    logs = list((tmp_path / "state").glob("debug-*.log"))
    assert len(logs) == 1 and "RuntimeError: boom" in logs[0].read_text()


def test_subprocess_exit_codes_and_no_color(tmp_path: Path, fake_plan: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(tmp_path / "state")]
    done = subprocess.run([*cmd, "start", "mailhost", "--plan", str(fake_plan)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\x1b[" not in done.stdout  # not a terminal + NO_COLOR: plain text
    bad = subprocess.run([*cmd, "abort", "mailhost", "--yes"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "cannot abort a run in phase completed" in bad.stderr
    usage = subprocess.run([*cmd, "start"], capture_output=True, text=True, env=env, timeout=60)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("upgrader")
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "upgrader" in done.stdout


def test_plan_check_shows_the_package_forward(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    books = _playbooks_with_keys(tmp_path)
    plan = books / "freebsd7.yml"
    plan.write_text(plan.read_text().replace("  network: staging-isolated ",
                                             '  packages: {proxy: "http://10.0.0.5:3128", port: 3142}\n  network: staging-isolated '))
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "playbooks/freebsd7.yml")
    assert code == 0, out
    assert ("packages: the twin's 127.0.0.1:3142 forwarded over upgrader's SSH connection to the package proxy "
            "10.0.0.5:3128") in " ".join(out.split())
