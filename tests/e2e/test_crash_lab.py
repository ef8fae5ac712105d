"""The crash matrix on the lab: SIGKILL the real orchestrator at a step boundary or inside a
side-effecting step (watching its journal), then `upgrader resume`; a client delivers mail the
whole time. Every point must end with the run completed, each side effect done once (one
snapshot overlay, one twin), no mail lost, no sync key and no client hold left behind.

CI runs the points marked `fast`; the whole matrix (and its table for docs/reliability.md):
    UPGRADER_CRASH_FULL=1 .venv/bin/python -m pytest tests/e2e/test_crash_lab.py -q -s
Some points only (by step key; with UPGRADER_CRASH_FULL=1 their rows are appended too):
    UPGRADER_CRASH_ONLY='presync.pass[2],upgrade[5]' .venv/bin/python -m pytest tests/e2e/test_crash_lab.py -q -s
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_workflow import PLAN, Traffic, fresh, images, message_ids, status, upgrader  # noqa: I001
from upgrader.lab import Lab

pytestmark = pytest.mark.lab
FULL = bool(os.environ.get("UPGRADER_CRASH_FULL"))
RESULTS = Path(os.environ.get("UPGRADER_CRASH_RESULTS", "/tmp/crash-matrix.jsonl"))  # written by the full run

# (journal event, step key, seconds after it, fast subset?) — "begin" + delay = inside the step
POINTS = [
    ("done", "preflight", 0, False),
    ("begin", "snapshot", 0, False),
    ("done", "snapshot", 0, False),
    ("begin", "clone.define", 0, False),
    ("begin", "clone.start", 0, False),
    ("begin", "clone.ssh", 3, False),
    ("begin", "upgrade[0]", 0.3, False),
    ("begin", "upgrade[1]", 0.2, False),
    ("begin", "upgrade[2]", 0.5, False),
    ("begin", "upgrade[3]", 2, False),  # in CI until 2026-12-02 (the hold point took its place)
    ("begin", "upgrade[4]", 0.5, False),
    ("begin", "upgrade[5]", 0.3, False),
    ("done", "upgrade[5]", 0, False),
    ("begin", "validate_staging", 0.1, False),
    ("begin", "presync.pass[1]", 0.4, False),
    ("begin", "presync.pass[2]", 0.3, False),
    ("begin", "presync.rehearse.quiesce", 0.1, False),  # inside: the twin's services stopping
    ("begin", "presync.rehearse.service_start", 0.1, False),  # inside: the twin's services starting
    ("done", "await_window", 0, False),
    ("begin", "cutover.hold_clients", 0.3, False),  # inside: libvirt writing the hold's rules
    ("done", "cutover.hold_clients", 0, True),  # clients held, prod not quiesced
    ("done", "cutover.quiesce", 0, False),
    ("begin", "cutover.final_sync", 0.4, True),
    ("begin", "cutover.takeover", 0, False),
    ("done", "cutover.takeover", 0, False),
    ("begin", "cutover.resume", 0, False),
    ("begin", "cutover.release_clients", 0.2, False),  # inside the release
    ("begin", "verify", 0, False),
    ("decommission", "decommission.flatten", 0.1, False),
    ("decommission", "decommission.undefine", 0, False),
]
ONLY = [k for k in os.environ.get("UPGRADER_CRASH_ONLY", "").split(",") if k]  # step keys, e.g. presync.pass[2]
SELECTED = [p for p in POINTS if (p[1] in ONLY) if ONLY] or [p for p in POINTS if FULL or p[3]]


def wait_journal(state: Path, event: str, key: str, proc: subprocess.Popen[str], timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for journal in state.glob("mailhost/*/journal.jsonl"):
            for line in journal.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("kind") == event and entry.get("key") == key:
                    return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(("event", "key", "delay", "fast"), SELECTED, ids=[f"{e}:{k}+{d}" for e, k, d, _ in SELECTED])
def test_kill_and_resume_on_the_lab(lab: Lab, tmp_path: Path, event: str, key: str, delay: float, fast: bool) -> None:
    fresh(lab)
    state = tmp_path / "state"
    base = [sys.executable, "-m", "upgrader.cli.main", "--state-dir", str(state), "-q"]
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    started = time.monotonic()
    killed = False
    try:
        if event == "decommission":  # the kill lands in `upgrader decommission`
            assert upgrader(state, "start", "mailhost", "--plan", str(PLAN)).returncode == 0
            proc = subprocess.Popen([*base, "decommission", "mailhost", "--yes"], text=True, stdout=subprocess.DEVNULL)
            reached = wait_journal(state, "begin", key, proc)
        else:
            proc = subprocess.Popen([*base, "start", "mailhost", "--plan", str(PLAN)], text=True, stdout=subprocess.DEVNULL)
            reached = wait_journal(state, event, key, proc)
        assert reached, f"{event}:{key} never reached (rc {proc.poll()})"
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed = True
        proc.wait(timeout=30)
        done = upgrader(state, *(("decommission", "mailhost", "--yes") if event == "decommission" else ("resume", "mailhost")))
        assert done.returncode == 0, done.stdout[-3000:]
    finally:
        seen = traffic.stop()
    record = status(state)
    want = "decommissioned" if event == "decommission" else "completed"
    assert record["phase"] == want
    prod = "prod"
    assert "release 2" in lab.guest_exec(prod, "cat /etc/labos-release").stdout
    missing = set(seen["accepted"]) - message_ids(lab, prod)
    assert not missing, f"{len(missing)} accepted mails lost"
    assert lab.guest_exec(prod, "ls /root/.upgrader-sync 2>/dev/null | wc -l").stdout.strip() == "0"
    assert "upgrader-sync" not in lab.guest_exec(prod, "cat /root/.ssh/authorized_keys").stdout
    names = {info.name for info, _ in lab.domains()}
    overlays = {n for n in images(lab) if ".upgrader-" in n}
    for domain in sorted(names):  # no held port left: filterref, binding, hold filter or rule
        held = lab.client_holds(domain)
        assert held.clear, (domain, held)
    if want == "completed":
        assert names == {"mailhost", "mailhost-twin"} and len(overlays) == 1, (names, images(lab))
    else:
        assert names == {"mailhost-twin"} and images(lab) == {"mailhost.mailhost-twin.qcow2"}
    if not FULL:
        return
    with RESULTS.open("a") as out:
        out.write(json.dumps({"point": f"{event}:{key}+{delay}s", "killed": killed, "phase": record["phase"],
                              "accepted": len(seen["accepted"]), "lost": len(missing),
                              "seconds": round(time.monotonic() - started, 1)}) + "\n")
