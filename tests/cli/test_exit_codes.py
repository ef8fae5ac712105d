"""Every exit code of docs/cli.md that the fakes can trigger, pinned in one place (in-process
main(), as the operator's shell sees them): 0 done/parked/aborted or rolled back as asked, 1 run
failed, 2 bad input, 3 locked, 4 corrupt state, 5 infrastructure unreachable, 6 held, 70 internal
error, 130 interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile


def start(capsys: pytest.CaptureFixture[str], state: Path, plan: Path) -> tuple[int, str]:
    return run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(plan))


def test_0_completed_and_parked_keeping_the_old_vm(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    code, out = start(capsys, tmp_path / "state", fake_plan)
    assert code == 0 and "parked" in out and "kept until" in out, out


def test_0_decommissioned(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    start(capsys, tmp_path / "state", fake_plan)
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "decommission", "mailhost", "--yes")
    assert code == 0 and "decommissioned" in out, out


def test_0_requested_abort_of_a_held_run(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                         fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update install", "rc": 1})
    assert start(capsys, tmp_path / "state", fake_plan)[0] == 6
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "abort", "mailhost", "--yes")
    assert code == 0 and "aborted" in out, out


def test_0_requested_rollback(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    start(capsys, tmp_path / "state", fake_plan)
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "rollback", "mailhost", "--yes")
    assert code == 0 and "rolled_back" in out, out


def test_1_automatic_abort_after_a_failure(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile,
                                           abort_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("probe:staging")
    code, out = start(capsys, tmp_path / "state", abort_plan)
    assert code == 1 and "aborted" in out, out


def test_1_abort_that_only_finishes_an_automatic_abort(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       fake_world: WorldFile, abort_plan: Path) -> None:
    """The operator did not ask for this abort: the run failed; `abort` only finished its cleanup."""
    with fake_world.change() as world:
        world["faults"].append("probe:staging")
    state = tmp_path / "state"
    assert start(capsys, state, abort_plan)[0] == 1
    store = RunStore(state)
    record = store.latest("mailhost")
    assert record is not None
    record.finished = False  # as if killed before the cleanup's end was saved
    store.save(record)
    code, out = run(capsys, "--state-dir", str(state), "abort", "mailhost", "--yes")
    assert code == 1 and "aborted" in out, out


def test_1_automatic_rollback_after_verify_failed(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("probe:prod")
    code, out = start(capsys, tmp_path / "state", fake_plan)
    assert code == 1 and "rolled_back" in out, out


def test_2_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "--state-dir", str(tmp_path), "resume", "ghost")[0] == 2
    assert run(capsys, "--state-dir", str(tmp_path), "start", "mailhost", "--plan", str(tmp_path / "nope.yml"))[0] == 2
    assert run(capsys, "--state-dir", str(tmp_path), "no-such-command")[0] == 2


def test_3_locked(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    start(capsys, state, fake_plan)
    with RunStore(state).lock("mailhost"):
        code, out = run(capsys, "--state-dir", str(state), "resume", "mailhost")
    assert code == 3, out


def test_4_corrupt_state(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    start(capsys, state, fake_plan)
    next((state / "mailhost").glob("*/run.json")).write_text("{not json")
    for args in (("status", "mailhost"), ("rollback", "mailhost"), ("decommission", "mailhost")):
        code, out = run(capsys, "--state-dir", str(state), *args)  # asked nothing: refused first
        assert code == 4 and "not a valid run record" in out, (args, out)


def test_5_libvirt_unreachable(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    plan = tmp_path / "real.yml"
    plan.write_text(fake_plan.read_text().replace(f"fake://{tmp_path / 'world.json'}", "qemu+tcp://127.0.0.1:1/system"))
    code, out = start(capsys, tmp_path / "state", plan)
    assert code == 5 and "libvirt" in out and "Traceback" not in out, out


def test_6_held(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["commands"].insert(0, {"match": "labos-update install", "rc": 1})
    code, out = start(capsys, tmp_path / "state", fake_plan)
    assert code == 6 and "held" in out, out


def test_70_internal_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    import upgrader.app

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(upgrader.app, "start", boom)
    code, out = start(capsys, tmp_path / "state", fake_plan)
    assert code == 70 and "internal error" in out, out


def test_130_interrupted_with_nothing_running(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import upgrader.app

    def ctrl_c(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(upgrader.app, "start", ctrl_c)
    code, out = start(capsys, tmp_path / "state", fake_plan)
    assert code == 130 and out.strip() == "interrupted", out


def test_130_interrupted_mid_run_names_the_host_to_resume(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          fake_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from upgrader.testing.fakes import FakeHypervisor

    def ctrl_c(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeHypervisor, "clone", ctrl_c)
    code, out = start(capsys, tmp_path / "state", fake_plan)
    assert code == 130 and "interrupted — `upgrader resume mailhost` continues from the last checkpoint" in out, out
