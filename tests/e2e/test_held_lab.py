"""The operator's repair loop on the lab (issue 11): a "port" that fails to build until a person
edits a file on the twin. The run is held, the twin runs on staging, prod serves mail; the
operator gets in with `upgrader ssh --twin`, fixes it and `upgrader retry`: completed, 0 accepted
mails lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from test_workflow import PLAN, Traffic, fresh, images, message_ids, plan_variant, status, upgrader  # noqa: I001
from upgrader.lab import Lab

pytestmark = pytest.mark.lab

FIX = "echo 'mailfilter: LIBMILTER=6' >> /etc/labos-ports.conf"


def test_broken_port_held_fixed_over_ssh_and_retried(lab: Lab, tmp_path: Path) -> None:
    fresh(lab, ("port-broken",))
    state = tmp_path / "state"
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    try:
        started = time.monotonic()
        done = upgrader(state, "start", "mailhost", "--plan", str(PLAN))
        held_after = time.monotonic() - started
        assert done.returncode == 6, done.stdout  # held
        record = status(state)
        assert record["phase"] == "held" and record["held"]["step"] == "upgrade[4]", record["held"]
        assert record["held"]["rc"] == 1 and "libmilter.so.6" in record["held"]["tail"]
        shown = upgrader(state, "status", "mailhost")
        assert "held at upgrade[4] (install world and rebuild ports): exited 1" in shown.stdout
        assert "upgrader retry mailhost" in shown.stdout
        # the twin runs on staging; prod serves, untouched
        states = {info.name: state for info, state in lab.domains()}
        assert states == {"mailhost": "running", "mailhost-twin": "running"}, states
        assert "release 1" in lab.guest_exec("prod", "cat /etc/labos-release").stdout
        assert lab.smtp_probe()["ok"]
        # the operator gets in through the run's own pinned path
        release = upgrader(state, "ssh", "mailhost", "--twin", "--", "cat", "/etc/labos-release")
        assert release.returncode == 0 and "release" in release.stdout, release.stdout
        failing = upgrader(state, "ssh", "mailhost", "--twin", "--", "sh", "-c", "exit 3")
        assert failing.returncode == 3
        assert upgrader(state, "ssh", "mailhost", "--twin", "--", "sh", "-c", FIX).returncode == 0
        done = upgrader(state, "retry", "mailhost")
        assert done.returncode == 0, done.stdout
    finally:
        seen = traffic.stop()
    record = status(state)
    assert record["phase"] == "completed" and record["held"] is None
    assert "release 2" in lab.guest_exec("prod", "cat /etc/labos-release").stdout
    missing = set(seen["accepted"]) - message_ids(lab, "prod")
    assert not missing, f"{len(missing)} of {len(seen['accepted'])} accepted mails lost"
    journal = upgrader(state, "show", "mailhost", "--json").stdout
    assert '"action": "retry"' in journal and '"kind": "ssh"' in journal
    assert upgrader(state, "decommission", "mailhost", "--yes").returncode == 0
    assert {info.name for info, _ in lab.domains()} == {"mailhost-twin"}
    assert images(lab) == {"mailhost.mailhost-twin.qcow2"}, images(lab)  # as after a run with no failure
    print(f"held {held_after:.0f} s after start; {len(seen['accepted'])} mails accepted during the run, 0 lost; "
          f"images after decommission: {sorted(images(lab))}")


def test_revert_to_a_checkpoint_then_fix_and_retry(lab: Lab, tmp_path: Path) -> None:
    """held -> revert --to upgrade[4] (the twin's disks exactly as before that step: a file made
    since is gone; the step runs again and, unfixed, holds again) -> fix -> retry -> completed.
    After decommission the images are those of a run with no failure."""
    fresh(lab, ("port-broken",))
    state = tmp_path / "state"
    plan = plan_variant(tmp_path, "  - name: install world and rebuild ports\n",
                        "  - name: install world and rebuild ports\n    checkpoint: true\n")
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    try:
        assert upgrader(state, "start", "mailhost", "--plan", str(plan)).returncode == 6
        listed = upgrader(state, "checkpoints", "mailhost")
        assert listed.returncode == 0 and "upgrade[0]" in listed.stdout and "upgrade[4]" in listed.stdout
        assert any(p.endswith(".ckpt-upgrade[4].qcow2") for p in images(lab)), images(lab)
        made = "touch /root/made-after-the-checkpoint"
        assert upgrader(state, "ssh", "mailhost", "--twin", "--", "sh", "-c", made).returncode == 0
        started = time.monotonic()
        done = upgrader(state, "revert", "mailhost", "--to", "upgrade[4]", "--yes")
        took = time.monotonic() - started
        assert done.returncode == 6, done.stdout  # step 4 ran again on the reverted twin: still broken
        record = status(state)
        assert record["phase"] == "held" and record["held"]["step"] == "upgrade[4]"
        gone = upgrader(state, "ssh", "mailhost", "--twin", "--", "test", "-e", "/root/made-after-the-checkpoint")
        assert gone.returncode == 1, "a file made after the checkpoint survived the revert"
        assert upgrader(state, "ssh", "mailhost", "--twin", "--", "sh", "-c", FIX).returncode == 0
        done = upgrader(state, "retry", "mailhost")
        assert done.returncode == 0, done.stdout
    finally:
        seen = traffic.stop()
    assert status(state)["phase"] == "completed"
    assert not any(".ckpt-" in p for p in images(lab)), images(lab)  # merged back before the cutover
    missing = set(seen["accepted"]) - message_ids(lab, "prod")
    assert not missing, f"{len(missing)} of {len(seen['accepted'])} accepted mails lost"
    assert upgrader(state, "decommission", "mailhost", "--yes").returncode == 0
    assert images(lab) == {"mailhost.mailhost-twin.qcow2"}, images(lab)
    print(f"revert + the step again took {took:.0f} s; {len(seen['accepted'])} mails accepted, 0 lost")
