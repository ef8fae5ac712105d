"""Plan checks for a new run (issue 12 point 5): a window with no usable occurrence from now on is
refused with its position (plan check, dry run, start); the SSH key and known_hosts files a plan
names must exist (plan check, preflight)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from upgrader.errors import PlanError
from upgrader.plan import parse_plan
from upgrader.plan_files import plan_file_problems

MINIMAL = (Path(__file__).parent / "fixtures" / "minimal.yml").read_text()
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as info:
        parse_plan(text, "p.yml", now=NOW)
    return info.value.problems


def test_window_in_the_past_is_refused_with_its_position() -> None:
    text = MINIMAL + "window: {start: 2026-11-30T03:00:00, duration: 2h}\n"
    (problem,) = problems(text)
    line = len(MINIMAL.splitlines()) + 1
    assert problem.startswith(f"p.yml:{line}:17: window.start: the window (2026-11-30T03:00:00 UTC, 2h) is in the past")
    assert parse_plan(text, "p.yml").window is not None  # a running run's plan is never refused for it


def test_lead_time_that_leaves_no_window_is_refused() -> None:
    text = MINIMAL + "window: {start: 2026-12-01T18:00:00, duration: 2h, lead_time: 1d}\n"
    (problem,) = problems(text)
    assert "or starts sooner than lead_time (1d) from now" in problem


def test_windows_to_come_pass() -> None:
    for window in ("{start: 2026-12-02T03:00:00, duration: 2h}", "{weekly: {weekday: sun, time: '03:00'}, duration: 2h}",
                   "{start: 2026-12-01T11:30:00, duration: 2h}"):  # open now
        assert parse_plan(MINIMAL + f"window: {window}\n", "p.yml", now=NOW).window is not None


def test_key_files_missing_relative_to_the_plan(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("")
    text = MINIMAL.replace("ssh:\n", "ssh:\n", 1)
    plan = parse_plan(text, str(tmp_path / "p.yml"))
    plan.ssh.prod.key, plan.ssh.prod.known_hosts = "keys/id", "keys/kh"
    plan.ssh.staging.key, plan.ssh.staging.known_hosts = "keys", str(tmp_path / "abs_kh")
    found = [str(p) for p in plan_file_problems(plan)]
    assert found == [
        f"ssh.prod.known_hosts: {tmp_path}/keys/kh: no such file",
        f"ssh.staging.key: {tmp_path}/keys: is a directory, not a file",
        f"ssh.staging.known_hosts: {tmp_path}/abs_kh: no such file",
    ]
