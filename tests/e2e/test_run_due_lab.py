"""`upgrader run-due` over two runs in one state dir on the real lab, one of them broken (issue 12,
acceptance: "run-due over two lab runs, one of them broken").

The lab has one prod VM (docs/lab.md): a second real run of another VM is not possible. The
broken run is a second host in the same state dir whose run points at the same lab but is broken
before it touches anything: a copy of the good run (its run.json and journal, so it is a parked
run like the other, claiming the same VM) whose plan file was edited since it started. run-due
must report it by name on every call and still cut the good run over when its window opens, and
exit 7 (a host needs an operator). While nothing is due, `-q run-due` prints nothing for the good
run and its run.json does not grow."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

import pytest
from test_workflow import fresh, plan_variant, status, upgrader

from upgrader.lab import Lab

pytestmark = pytest.mark.lab


def broken_copy(state: Path, plan: Path, host: str) -> Path:
    """`host`: a copy of mailhost's parked run, with a plan of its own that is then edited."""
    [run_dir] = [p for p in (state / "mailhost").iterdir() if p.is_dir()]
    own_plan = plan.with_name(f"{host}.yml")
    shutil.copyfile(plan, own_plan)
    target = state / host / run_dir.name
    target.parent.mkdir(mode=0o700)
    shutil.copytree(run_dir, target)
    record = json.loads((target / "run.json").read_text())
    record.update(host=host, plan_path=str(own_plan))
    (target / "run.json").write_text(json.dumps(record))
    (target / "events.jsonl").unlink(missing_ok=True)
    own_plan.write_text(own_plan.read_text().replace("keep_old_for: 1h", "keep_old_for: 2h"))  # edited since start
    return target


def test_run_due_cuts_the_good_run_over_and_reports_the_broken_one(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    opens = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=3)).replace(second=0, microsecond=0, tzinfo=None)
    plan = plan_variant(tmp_path, "keep_old_for: 1h",
                        f"keep_old_for: 1h\nwindow: {{start: {opens.isoformat()}, duration: 20m, timezone: UTC}}\n")
    state = tmp_path / "state"
    done = upgrader(state, "start", "mailhost", "--plan", str(plan))
    assert done.returncode == 0 and status(state)["phase"] == "await_window", done.stdout
    broken = broken_copy(state, plan, "broken-host")
    good_json = next(p for p in (state / "mailhost").iterdir() if p.is_dir()) / "run.json"
    parked_json = good_json.read_bytes()

    calls, idle_calls = 0, 0
    deadline = time.monotonic() + 900
    while status(state)["phase"] == "await_window" and time.monotonic() < deadline:
        done = upgrader(state, "-q", "run-due")  # cron's role, every few seconds
        calls += 1
        assert done.returncode == 7, done.stdout + done.stderr  # the broken host needs an operator
        assert "broken-host: error: the plan" in done.stderr and "edited in fields a running run cannot take" in done.stderr
        if status(state)["phase"] == "await_window":
            idle_calls += 1
            assert "mailhost" not in done.stdout + done.stderr  # nothing due there: -q says nothing
            assert good_json.read_bytes() == parked_json  # and writes nothing
            time.sleep(5)
    assert idle_calls >= 2, "the window opened before run-due could be seen doing nothing"
    assert "mailhost: completed" in done.stdout, done.stdout

    document = json.loads(upgrader(state, "status", "--json").stdout)
    states = {run["host"]: run for run in document["runs"]}
    assert states["mailhost"]["phase"] == "completed" and states["mailhost"]["state"] == "parked"  # keep_old_for
    assert dt.datetime.fromisoformat(states["mailhost"]["outputs"]["verify"]["at"]).replace(tzinfo=None) >= opens
    assert states["broken-host"]["phase"] == "await_window"  # untouched
    assert "mailhost-twin" in {info.name for info, _ in lab.domains()}
    assert (broken / "journal.jsonl").exists()
