"""Issue 12 point 5: everything preflight checks is checked before the run is created, every
inhibitor reported together, nothing created when one fails; `upgrader preflight` runs the same
checks read-only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from upgrader import app
from upgrader.preflight_checks import PreflightFailed, run_checks
from upgrader.run_plan import PLAN_COPY
from upgrader.store import RunStore
from upgrader.testing.fakes import WorldFile, build
from upgrader.testing.scenario import FAKE_PLAN, effects
from upgrader.plan import load_plan
from upgrader.record import utcnow


def context(tmp_path: Path) -> app.Context:
    return app.Context(RunStore(tmp_path / "state"), [])


def plan_with(tmp_path: Path, world: WorldFile, extra: str = "", ssh: str = "{host: 192.0.2.10}") -> Path:
    path = tmp_path / "p.yml"
    text = FAKE_PLAN.format(world=world.path, keep="1h").replace("prod: {host: 192.0.2.10}", f"prod: {ssh}")
    path.write_text(text + extra)
    return path


def test_start_reports_every_inhibitor_and_creates_nothing(tmp_path: Path, fake_world: WorldFile) -> None:
    with fake_world.change() as world:
        world["commands"][:0] = [{"match": r"^command -v rsync$", "rc": 1},
                                 {"match": r"^test -d /var/mail/$", "rc": 1}]
        world["free_memory"] = 512 * 2**20  # the twin needs 1 GiB
    plan = plan_with(tmp_path, fake_world, ssh="{host: 192.0.2.10, key: keys/id, known_hosts: keys/kh}")
    ctx = context(tmp_path)
    with pytest.raises(PreflightFailed) as info:
        app.start(ctx, app.StartOptions("mailhost", str(plan)))
    message = info.value.message
    assert info.value.exit_code == 1
    assert f"ssh.prod.key: {tmp_path}/keys/id: no such file" in message
    assert f"ssh.prod.known_hosts: {tmp_path}/keys/kh: no such file" in message
    assert "tools on prod: missing: rsync" in message
    assert "sync paths: not a directory on prod: /var/mail/" in message
    assert "memory: the twin needs 1.0 GiB" in message and "only 0.5 GiB free" in message
    assert "upgrader preflight mailhost" in (info.value.hint or "")
    assert not (tmp_path / "state" / "mailhost").exists() or RunStore(tmp_path / "state").runs("mailhost") == []
    assert effects(fake_world, "set_claim") == []  # the VM was not claimed


def test_start_with_libvirt_unreachable_exits_5_and_creates_nothing(tmp_path: Path, fake_world: WorldFile,
                                                                    fake_plan: Path) -> None:
    with fake_world.change() as world:
        world["faults"].append("libvirt")
    ctx = context(tmp_path)
    with pytest.raises(PreflightFailed) as info:
        app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    assert info.value.exit_code == 5 and "libvirt: fake: cannot connect to libvirt" in info.value.message
    assert RunStore(tmp_path / "state").runs("mailhost") == []


def test_checks_pass_on_a_good_world(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    plan = load_plan(fake_plan)
    report = run_checks(plan, build(plan), utcnow())
    assert report.ok, report.inhibitors
    assert [c.name for c in report.checks] == ["plan files", "libvirt", "domain", "domain running", "twin name free",
                                              "disk space", "memory", "SSH to prod", "tools on prod", "sync paths"]
    ran = [e["cmd"] for e in effects(fake_world, "run")]
    assert ran == ["command -v rsync", "command -v ssh-keygen || command -v dropbearkey",
                   "command -v ssh || command -v dbclient", "test -d /var/mail/"]  # read-only, on prod
    assert {e["role"] for e in effects(fake_world, "run")} == {"prod"}


def test_started_run_keeps_its_plan_copy_0600(tmp_path: Path, fake_world: WorldFile, fake_plan: Path) -> None:
    ctx = context(tmp_path)
    record = app.start(ctx, app.StartOptions("mailhost", str(fake_plan)))
    copy = ctx.store.run_dir("mailhost", record.run_id) / PLAN_COPY
    assert copy.read_bytes() == fake_plan.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


# -- the window: a window in the past is caught by plan check and the dry run -------------------

PAST = "window: {start: 2020-01-05T03:00:00, duration: 2h, timezone: UTC}\n"


def test_plan_check_and_dry_run_refuse_a_window_in_the_past(tmp_path: Path, fake_world: WorldFile,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from upgrader.cli.main import main

    plan = plan_with(tmp_path, fake_world, PAST)
    for args in (["plan", "check", str(plan)], ["start", "mailhost", "--plan", str(plan), "--dry-run"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        out = capsys.readouterr()
        assert info.value.code == 2, out
        assert "window.start: the window (2020-01-05T03:00:00 UTC, 2h) is in the past" in out.out + out.err


def test_a_window_too_short_for_a_cutover_is_refused(tmp_path: Path, fake_world: WorldFile) -> None:
    plan = plan_with(tmp_path, fake_world, "window: {weekly: {weekday: sun, time: '03:00'}, duration: 10s}\n")
    with pytest.raises(Exception, match="cannot take a cutover"):
        app.load(str(plan))


# -- `upgrader preflight` -----------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from upgrader.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out + out.err


def test_preflight_command_all_pass(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "--state-dir", str(tmp_path / "state"), "preflight", "mailhost", "--plan", str(fake_plan))
    assert code == 0, out
    assert "✓ memory: 16.0 GiB free for the twin's 1.0 GiB" in out
    assert "✓ tools on prod: rsync, ssh-keygen or dropbearkey, ssh or dbclient" in out
    assert not (tmp_path / "state").exists()  # nothing created
    assert effects(fake_world, "set_claim") == []


def test_preflight_command_lists_inhibitors(tmp_path: Path, fake_world: WorldFile,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with fake_world.change() as world:
        world["commands"][:0] = [{"match": r"ssh-keygen", "rc": 1}]
        world["free_memory"] = 2**29
    plan = plan_with(tmp_path, fake_world, PAST)  # refused by start and plan check; a check here
    code, out = cli(capsys, "preflight", "mailhost", "--plan", str(plan))
    assert code == 1, out
    assert "✗ window: window.start: the window" in out
    assert "✗ tools on prod: missing: ssh-keygen or dropbearkey" in out
    assert "✗ memory: the twin needs 1.0 GiB" in out
    assert "✓ sync paths: /var/mail/" in out
    assert "3 inhibitor(s)" in out


def test_preflight_command_libvirt_unreachable_exit_5(tmp_path: Path, fake_world: WorldFile, fake_plan: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with fake_world.change() as world:
        world["faults"].append("libvirt")
    code, out = cli(capsys, "preflight", "mailhost", "--plan", str(fake_plan))
    assert code == 5 and "✗ libvirt: fake: cannot connect to libvirt" in out


def test_real_libvirt_unreachable_uri_exits_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real adapter (no lab needed): a URI whose socket does not exist."""
    pytest.importorskip("libvirt")
    plan = tmp_path / "p.yml"
    text = FAKE_PLAN.format(world="/x", keep="1h").replace("fake:///x", '"qemu:///system?socket=/nonexistent"')
    plan.write_text(text.replace("prod: {host: 192.0.2.10}", "prod: {host: 127.0.0.1, port: 9, connect_timeout: 2s}"))
    code, out = cli(capsys, "preflight", "mailhost", "--plan", str(plan))
    assert code == 5 and "✗ libvirt: cannot connect to libvirt at qemu:///system?socket=/nonexistent" in out
    code, out = cli(capsys, "--state-dir", str(tmp_path / "state"), "start", "mailhost", "--plan", str(plan))
    assert code == 5 and "cannot connect to libvirt" in out
    assert not list((tmp_path / "state").glob("mailhost/2*"))  # no run created


def test_real_ssh_adapter_missing_known_hosts_is_input_error(tmp_path: Path) -> None:
    """Was a raw FileNotFoundError (exit 70): load_host_keys ran outside the adapter's error handling."""
    from upgrader.adapters.fabric_shell import FabricShells
    from upgrader.errors import InputError
    from upgrader.plan import parse_plan

    text = FAKE_PLAN.format(world="/x", keep="1h").replace(
        "prod: {host: 192.0.2.10}", "prod: {host: 127.0.0.1, port: 9, known_hosts: nowhere/kh}")
    plan = parse_plan(text, str(tmp_path / "p.yml"))
    with pytest.raises(InputError, match=f"cannot read the known_hosts file {tmp_path}/nowhere/kh"):
        FabricShells(plan).connect("prod", wait=0)


def test_preflight_command_reports_an_unfinished_run_and_a_foreign_claim(
        tmp_path: Path, fake_world: WorldFile, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_with(tmp_path, fake_world, "window: {start: 2030-01-01T01:30:00, duration: 1h}\n")
    state = tmp_path / "state"
    app.start(app.Context(RunStore(state), []), app.StartOptions("mailhost", str(plan)))  # parks, VM claimed
    code, out = cli(capsys, "--state-dir", str(state), "preflight", "mailhost", "--plan", str(plan))
    assert code == 1, out
    assert '✗ no unfinished run: host "mailhost" has an unfinished run' in out
    assert "✗ twin name free: a domain named mailhost-twin already exists" in out
    code, out = cli(capsys, "--state-dir", str(tmp_path / "other"), "preflight", "other-name", "--plan", str(plan))
    assert code == 1 and "✗ VM not claimed: mailhost is claimed by run" in out  # under any name, from any state dir
