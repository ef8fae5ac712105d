"""Small things an operator meets: human durations in the dry run, a hint for YAML indentation
mistakes, events.jsonl private to its owner."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from cli_helpers import REPO, run
from upgrader.testing.fakes import WorldFile
from upgrader.testing.scenario import FAKE_PLAN

TIMEDELTA_REPR = re.compile(r"\b\d+:\d\d:\d\d\b|\bdays?, ")  # str(timedelta): "1:00:00", "1 day, 0:00:00"


def test_dry_run_durations_are_human(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_world: WorldFile) -> None:
    plan = tmp_path / "plan.yml"
    plan.write_text(FAKE_PLAN.format(world=fake_world.path, keep="1d"))
    code, out = run(capsys, "start", "mailhost", "--plan", str(plan), "--dry-run")
    assert code == 0, out
    assert "(timeout 1h)" in out and "(up to 10m)" in out and "(link down) for 1d;" in out, out
    assert not TIMEDELTA_REPR.search(out), TIMEDELTA_REPR.search(out)


@pytest.mark.parametrize("playbook", ["freebsd7.yml", "linux-debian.yml", "lab-mailhost.yml", "debian13-ansible.yml",
                                      "debian13.yml", "lab-debian.yml"])
def test_dry_run_of_the_playbooks_has_no_timedelta_repr(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                        playbook: str) -> None:
    monkeypatch.chdir(REPO)
    code, out = run(capsys, "start", "mailhost", "--plan", f"playbooks/{playbook}", "--dry-run")
    if code != 0:
        pytest.skip(f"{playbook} does not load here: {out[:200]}")
    assert not TIMEDELTA_REPR.search(out), TIMEDELTA_REPR.search(out)


@pytest.mark.parametrize(("text", "where"), [
    ("version: 1\nsource:\n  libvirt_uri: x\n   domain: y\n", ":4:10:"),  # one space too many
    ("version: 1\nsource:\n  libvirt_uri: x\n domain: y\n", ":4:2:"),  # one too few
    ("version: 1\nupgrade:\n  - name: a\n    run: b\n   - name: c\n", ":5:4:"),  # a list item out of line
], ids=["deeper", "shallower", "list-item"])
def test_yaml_indentation_error_says_so_with_a_hint(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str,
                                                    where: str) -> None:
    plan = tmp_path / "plan.yml"
    plan.write_text(text)
    code, out = run(capsys, "plan", "check", str(plan))
    assert code == 2
    assert f"{plan}{where} bad indentation: " in out, out
    assert "(hint: nested keys must be indented by the same number of spaces; tabs are not allowed)" in out


def test_events_log_is_private(capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_plan: Path) -> None:
    state = tmp_path / "state"
    assert run(capsys, "--state-dir", str(state), "start", "mailhost", "--plan", str(fake_plan))[0] == 0
    events = next(state.glob("mailhost/*/events.jsonl"))
    assert stat.S_IMODE(events.stat().st_mode) == 0o600
