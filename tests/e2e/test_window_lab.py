"""Issue 12 on the lab: a required approval parks a plan without a window until `upgrader
approve`; a window that opens after mail arrived while the run was parked pre-syncs again first,
and the forecast it decides with is within ±30% of the downtime then observed.

    flock /work/lab.lock .venv/bin/python -m pytest tests/e2e/test_window_lab.py -q -s"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from test_workflow import fresh, plan_variant, status, upgrader
from upgrader.lab import Lab

pytestmark = pytest.mark.lab

NEW_MAILS = 100
TOLERANCE = 0.30  # the goal: forecast within ±30% of the observed downtime


def new_passes(record: dict[str, object], before: set[str]) -> dict[str, dict[str, object]]:
    outputs = record["outputs"]
    assert isinstance(outputs, dict)
    return {k: v for k, v in outputs.items() if k.startswith("presync.pass[") and k not in before}


def test_approval_without_a_window_parks_then_approve_then_completes(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    state = tmp_path / "state"
    plan = plan_variant(tmp_path, "keep_old_for: 1h", "keep_old_for: 1h\napproval: required\n")
    done = upgrader(state, "start", "mailhost", "--plan", str(plan))
    assert done.returncode == 0, done.stdout
    record = status(state)
    assert record["phase"] == "await_window" and record["parked"].startswith("waiting for approval"), record["parked"]
    assert {info.name for info, _ in lab.domains()} == {"mailhost", "mailhost-twin"}
    assert "release 1" in lab.guest_exec("prod", "cat /etc/labos-release").stdout  # prod still the old VM
    done = upgrader(state, "run-due")  # cron before the approval: parks again
    assert done.returncode == 0 and status(state)["phase"] == "await_window", done.stdout
    done = upgrader(state, "approve", "mailhost", "--by", "alice")
    assert done.returncode == 0 and "approved by alice" in done.stdout, done.stdout
    done = upgrader(state, "resume", "mailhost")
    assert done.returncode == 0, done.stdout
    record = status(state)
    assert record["phase"] == "completed"
    assert record["outputs"]["await_window"]["decision"] == "approved"
    assert "release 2" in lab.guest_exec("prod", "cat /etc/labos-release").stdout
    assert lab.smtp_probe()["ok"]


@pytest.mark.full  # 245 s
def test_window_opening_after_mail_arrived_presyncs_again_and_forecasts_the_downtime(lab: Lab, tmp_path: Path) -> None:
    fresh(lab)
    state = tmp_path / "state"
    opens = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=4)).replace(second=0, microsecond=0, tzinfo=None)
    plan = plan_variant(tmp_path, "keep_old_for: 1h",
                        f"keep_old_for: 1h\nwindow: {{start: {opens.isoformat()}, duration: 15m, timezone: UTC}}\n")
    done = upgrader(state, "start", "mailhost", "--plan", str(plan))
    assert done.returncode == 0, done.stdout
    record = status(state)
    assert record["phase"] == "await_window" and "window opens" in record["parked"], record["parked"]
    before = {k for k in record["outputs"] if k.startswith("presync.pass[")}
    sent = lab.send_mails(NEW_MAILS, tag="parked")  # mail arrives while the run waits for its window
    assert sent["sent"] == NEW_MAILS, sent
    deadline = time.monotonic() + 900
    while status(state)["phase"] == "await_window" and time.monotonic() < deadline:
        time.sleep(5)  # cron's role
        done = upgrader(state, "run-due")
        assert done.returncode == 0, done.stdout
    record = status(state)
    assert record["phase"] == "completed", record
    outputs = record["outputs"]
    fresh_passes = new_passes(record, before)
    assert fresh_passes, "no pre-sync pass when the window opened"
    numbers = sorted(int(k[13:-1]) for k in fresh_passes)
    assert numbers[0] == len(before) + 1 and all(v["round"] == "window[0]" for v in fresh_passes.values())
    assert sum(int(v["files"]) for v in fresh_passes.values()) >= NEW_MAILS  # the parked mail went before the quiesce
    forecast = outputs["await_window"]["forecast"]
    observed = outputs["cutover.service_back"]["downtime"]
    print(f"forecast {forecast['total']:.2f} s = last pass {forecast['last_pass']:.2f} + quiesce {forecast['quiesce']:.2f} "
          f"+ takeover {forecast['takeover']:.2f} (estimated) + service start {forecast['service_start']:.2f}; "
          f"observed {observed:.2f} s; final sync {outputs['cutover.final_sync']['seconds']:.2f} s, "
          f"{outputs['cutover.final_sync']['files']} files; fresh passes {numbers}")
    arrived = lab.guest_exec("prod", "cat /var/mail/alice/new/* /var/mail/alice/cur/* 2>/dev/null "
                                     "| grep -c '^X-Lab-Probe: parked-' || true", timeout=120).stdout.strip()
    assert arrived == str(NEW_MAILS), arrived  # every mail of the parked days is on the new prod
    assert abs(forecast["total"] - observed) <= TOLERANCE * observed, (forecast, observed)
    assert lab.smtp_probe()["ok"]
