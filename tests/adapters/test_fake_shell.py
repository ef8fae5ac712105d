"""The fake shell fails loudly on a command it was not told about (like invoke's MockContext): no
canned entry and none of upgrader's own guest commands -> UnexpectedCall, carrying the command,
the role and what was canned; `expect_plan` cans what a plan itself runs, nothing more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import upgrader
from upgrader import app
from upgrader.cli.main import main
from upgrader.errors import UpgraderError
from upgrader.phases import Phase
from upgrader.plan import load_plan
from upgrader.ports import Command, cmd
from upgrader.steps import guest
from upgrader.store import RunStore
from upgrader.testing.fakes import FakeHypervisor, FakeShells, UnexpectedCall, WorldFile, new_world
from upgrader.testing.scenario import FAKE_PLAN, RELEASE_COMMANDS, effects
from upgrader.testing.world import expect_plan

PLAN_EXTRAS = """\
  - name: migrate
    run: labos-migrate --all
    probe: test -e /var/db/migrated
verify:
  - name: queue
    command: {run: mailq | wc -l}
"""


@pytest.fixture
def shells(tmp_path: Path) -> tuple[WorldFile, FakeShells]:
    """prod running with one canned command; a twin running on the staging net."""
    wf = WorldFile(tmp_path / "world.json")
    wf.write({**new_world(), "commands": [{"match": "smtpd stop", "role": "prod"}]})
    hv = FakeHypervisor(wf)
    hv.clone("mailhost", "mailhost-twin", hv.snapshot("mailhost", "snap", None), "stg-net")
    hv.start("mailhost-twin")
    return wf, FakeShells(wf, {"prod": "prod-net", "staging": "stg-net"})


def test_an_unknown_command_raises_with_command_role_and_canned_patterns(shells: tuple[WorldFile, FakeShells]) -> None:
    wf, fake = shells
    with pytest.raises(UnexpectedCall) as info:
        fake.connect("prod").run(Command.raw("rm -rf /var/mail"))
    err = info.value
    assert isinstance(err, AssertionError) and not isinstance(err, UpgraderError)  # never taken for a step failure
    assert (err.command, err.role, err.patterns) == ("rm -rf /var/mail", "prod", ["smtpd stop"])
    assert "`rm -rf /var/mail`" in str(err) and "on prod" in str(err) and "smtpd stop" in str(err)
    assert effects(wf, "run") == []  # it did not "run"
    assert [(e["role"], e["cmd"]) for e in effects(wf, "unexpected_run")] == [("prod", "rm -rf /var/mail")]
    with pytest.raises(UnexpectedCall) as info:  # an entry for another role does not count
        fake.connect("staging").run(Command.raw("/etc/init.d/smtpd stop"))
    assert info.value.role == "staging" and info.value.patterns == []


def test_a_canned_command_and_upgraders_own_guest_commands_run(shells: tuple[WorldFile, FakeShells]) -> None:
    _, fake = shells
    assert fake.connect("prod").run(Command.raw("/etc/init.d/smtpd stop")).rc == 0
    staging = fake.connect("staging")
    assert staging.run(guest.flush()).rc == 0  # before a checkpoint
    assert staging.run(guest.is_marked("/var/db/upgrader", "r1", "upgrade[0]")).rc == 1  # no marker yet
    assert fake.connect("prod").run(cmd("command -v rsync")).ok  # preflight's tool test
    claimed = fake.connect("prod").run(guest.claim_address("192.0.2.10/24", None, 3))
    assert claimed.ok and claimed.stdout.strip() == "192.0.2.10/24 on eth0"
    with pytest.raises(UnexpectedCall):  # the flush is the twin's: prod has no checkpoints
        fake.connect("prod").run(guest.flush())
    with pytest.raises(UnexpectedCall):  # a template that merely looks like one of ours
        staging.run(cmd("test -e {}", "/var/db/upgrader/r1/upgrade_0_.done"))


def test_preflights_tests_on_prod_are_modelled(shells: tuple[WorldFile, FakeShells]) -> None:
    """The fake's copy of preflight's tests is the one preflight sends (where preflight_checks exists)."""
    _, fake = shells
    if not (Path(upgrader.__file__).parent / "preflight_checks.py").exists():
        pytest.skip("no upgrader/preflight_checks.py in this tree")
    from upgrader.preflight_checks import TOOLS as tools  # type: ignore[import-not-found,unused-ignore]

    assert tools and all(fake.connect("prod").run(cmd(test)).ok for _, test in tools)
    assert fake.connect("prod").run(cmd("test -d {}", "/var/mail/")).ok


def test_expect_plan_cans_exactly_what_the_plan_declares(tmp_path: Path) -> None:
    wf = WorldFile(tmp_path / "world.json")
    path = tmp_path / "plan.yml"
    text = FAKE_PLAN.format(world=wf.path, keep="1h")
    path.write_text(text.replace("validate:\n", PLAN_EXTRAS + "validate:\n"))
    world = expect_plan(new_world(), path)
    assert expect_plan(world, load_plan(path)) == world  # idempotent, a Plan does as well as its file
    canned = {(e["match"], e.get("role"), e.get("rc", 0)) for e in world["commands"]}
    assert canned == {
        ("^labos-update fetch$", "staging", 0), ("^labos-update install$", "staging", 0),
        ("^labos-migrate --all$", "staging", 0), (r"^test -e /var/db/migrated$", "staging", 1),  # probe: not done
        ("^cat /etc/labos-release$", None, 0), (r"^mailq \| wc -l$", None, 0),
        (r"^/etc/init\.d/smtpd stop$", None, 0), (r"^/etc/init\.d/smtpd start$", None, 0)}
    assert expect_plan(new_world(), path, probe_rc=0)["commands"][3] == {
        "match": r"^test -e /var/db/migrated$", "role": "staging", "rc": 0}
    wf.write(world)
    hv = FakeHypervisor(wf)
    hv.clone("mailhost", "mailhost-twin", hv.snapshot("mailhost", "snap", None), "stg-net")
    hv.start("mailhost-twin")
    staging = FakeShells(wf, {"prod": "prod-net", "staging": "stg-net"}).connect("staging")
    assert staging.run(Command.raw("test -e /var/db/migrated")).rc == 1
    with pytest.raises(UnexpectedCall):  # a longer command is not the plan's
        staging.run(Command.raw("labos-update fetch --force"))


def _without(tmp_path: Path, word: str, but_on: str | None = None) -> tuple[WorldFile, Path]:
    """The scenario plan, its world told about everything but the commands with `word` (but on
    role `but_on`, if given)."""
    wf = WorldFile(tmp_path / "world.json")
    path = tmp_path / "plan.yml"
    path.write_text(FAKE_PLAN.format(world=wf.path, keep="1h"))
    world = expect_plan({**new_world(), "commands": list(RELEASE_COMMANDS)}, path)
    world["commands"] = [e if word not in e["match"] else {**e, "role": but_on}
                         for e in world["commands"] if word not in e["match"] or but_on]
    wf.write(world)
    return wf, path


@pytest.mark.parametrize("word, but_on, command, role, phase", [
    ("fetch", None, "labos-update fetch", "staging", Phase.UPGRADE),  # a failed step would hold
    ("labos-release", None, "cat /etc/labos-release", "staging", Phase.VALIDATE_STAGING),  # a failed check would hold
    ("smtpd stop", "staging", "/etc/init.d/smtpd stop", "prod", Phase.CUTOVER),  # a failed cutover would roll back
])
def test_the_engine_does_not_swallow_an_unexpected_call(tmp_path: Path, word: str, but_on: str | None, command: str,
                                                        role: str, phase: Phase) -> None:
    """An UnexpectedCall in a step reaches the caller: the run is neither held, aborted nor rolled back for it."""
    wf, path = _without(tmp_path, word, but_on)
    store = RunStore(tmp_path / "state")
    with pytest.raises(UnexpectedCall) as info:
        app.start(app.Context(store, []), app.StartOptions("mailhost", str(path)))
    assert (info.value.command, info.value.role) == (command, role)
    record = store.latest("mailhost")
    assert record is not None and record.phase == phase and record.held is None and record.error is None
    assert "mailhost-twin" in json.loads(wf.path.read_text())["domains"]  # not aborted: the twin is still there


def test_through_the_cli_an_unexpected_call_is_an_internal_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = _without(tmp_path, "fetch")
    with pytest.raises(SystemExit) as info:
        main(["--state-dir", str(tmp_path / "state"), "start", "mailhost", "--plan", str(path)])
    out = capsys.readouterr()
    assert info.value.code == 70 and "UnexpectedCall" in out.out + out.err
    assert "labos-update fetch" in out.out + out.err
