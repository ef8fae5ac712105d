"""The command group: --help lists every command (from the lazy table, which must match the
commands' own short help), global options are accepted after the subcommand too."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click
import pytest

from cli_helpers import REPO, run
from upgrader.cli.common import globals_of
from upgrader.cli.main import COMMANDS, cli


def test_help_lists_every_command_with_its_short_help(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    code, out = run(capsys, "--help")
    assert code == 0
    for name, entry in COMMANDS.items():
        command = getattr(importlib.import_module(entry.module), entry.attribute)
        assert command.name == name
        assert entry.short_help == command.get_short_help_str(limit=1000), name  # the table follows the docstring
        assert f"  {name} " in out and entry.short_help[:40] in out, name


def test_help_lists_commands_added_eagerly_too(capsys: pytest.CaptureFixture[str]) -> None:
    with _added(click.Command("extra-thing", help="An added command.", callback=lambda: None)):
        code, out = run(capsys, "--help")
    assert code == 0 and "extra-thing" in out and "An added command." in out


@pytest.mark.parametrize("args", [("status", "--state-dir", "{state}"), ("--state-dir", "{state}", "status"),
                                  ("status", "--state-dir={state}", "-q"), ("-q", "status", "mailhost", "--state-dir", "{state}")])
def test_state_dir_after_the_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                                        args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    assert run(capsys, "--state-dir", str(state), "-q", "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    monkeypatch.chdir(tmp_path)  # the default ./state would be empty
    code, out = run(capsys, *(a.format(state=state) for a in args))
    assert code == 0 and "mailhost" in out and "completed" in out, out


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_after_the_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path,
                                    quiet: bool) -> None:
    code, out = run(capsys, "start", "mailhost", "--plan", str(fake_plan), "--state-dir", str(tmp_path / "s"),
                    *(["-q"] if quiet else []))
    assert code == 0 and "completed" in out, out
    assert ("presync.pass[1] sent 40 files" in out) is not quiet  # the step output streamed, or not


def test_after_the_subcommand_wins(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, "--state-dir", str(tmp_path / "x"), "status", "--state-dir", str(tmp_path / "empty"))
    assert code == 0 and "no runs yet" in out


def test_nested_group_commands_accept_them(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    books = tmp_path / "playbooks"  # the shipped example with the key files it names (not shipped)
    books.mkdir()
    (books / "freebsd7.yml").write_text((REPO / "playbooks" / "freebsd7.yml").read_text())
    (books / "keys").mkdir()
    for name in ("upgrader_ed25519", "known_hosts"):
        (books / "keys" / name).write_text("")
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, "plan", "check", "playbooks/freebsd7.yml", "-q", "--state-dir", "/nonexistent")
    assert code == 0 and "ok" in out, out


def test_run_due_with_quiet_after_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, "run-due", "-q", "--state-dir", str(tmp_path / "state"))
    assert code == 0 and "No such option" not in out, out


def test_a_command_added_with_add_command_gets_them(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """What another module's command (e.g. a future cli/due.py) gets without doing anything."""
    seen: dict[str, object] = {}

    @click.command("probe-globals")
    @click.pass_context
    def probe(ctx: click.Context) -> None:
        seen.update(vars(globals_of(ctx)))

    with _added(probe):
        code, out = run(capsys, "probe-globals", "--state-dir", str(tmp_path), "--quiet")
    assert code == 0, out
    assert seen["state_dir"] == str(tmp_path) and seen["quiet"] is True


def test_a_command_keeps_its_own_option_of_that_name(capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, object] = {}

    @click.command("own-quiet")
    @click.option("-q", "quiet", is_flag=True)
    @click.pass_context
    def own(ctx: click.Context, quiet: bool) -> None:
        seen.update(own=quiet, global_=globals_of(ctx).quiet)

    with _added(own):
        code, out = run(capsys, "own-quiet", "-q")
    assert code == 0 and seen == {"own": True, "global_": False}, out


def test_subcommand_help_does_not_repeat_them(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "status", "--help")
    assert code == 0 and "--state-dir" not in out


def test_status_json_after_global_after(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))
    code, out = run(capsys, "status", "mailhost", "--json", "--state-dir", str(state))
    assert code == 0 and json.loads(out)["runs"][0]["host"] == "mailhost"


class _added:
    def __init__(self, command: click.Command) -> None:
        self.command = command

    def __enter__(self) -> None:
        cli.add_command(self.command)

    def __exit__(self, *_: object) -> None:
        cli.commands.pop(self.command.name or "", None)


def test_a_broken_install_is_an_internal_error_not_no_such_command(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Only the optional lab may be hidden by a failed import; any other command's ImportError is a
    bug to report (exit 70, a debug log), not "No such command" (exit 2)."""
    real = importlib.import_module

    def broken(name: str, *args: object) -> object:
        if name == "upgrader.cli.run":
            raise ImportError("cannot import name 'Calendar' from 'icalendar'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    code, out = run(capsys, "--state-dir", str(tmp_path / "state"), "start", "mailhost", "--plan", "x.yml")
    assert code == 70 and "internal error" in out and "No such command" not in out, out
    assert list((tmp_path / "state").glob("debug-*.log")), "no debug log written"


def test_the_lab_is_the_one_optional_command() -> None:
    assert [name for name, entry in COMMANDS.items() if entry.optional] == ["lab"]
