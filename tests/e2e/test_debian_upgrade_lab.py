"""The real-guest scenario on every CI run: the lab's Debian 12 mailhost (systemd, Postfix to mbox,
Dovecot IMAP) gets a REAL security update (bookworm-security through the package proxy, apt's own
prompt answered under a pty, services restarted, a reboot through GRUB) by the twin workflow while a
client delivers mail over SMTP; afterwards every accepted Message-ID is read back over IMAP on the new
prod and INBOX's UIDVALIDITY is what it was, so no client re-downloads the mailbox.

The full 12 -> 13 release upgrade (debian13.yml, ~20 min) is the documented command
`bash tools/bootstrap.sh demo debian` (docs/lab.md, docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_workflow import Traffic, status, upgrader
from upgrader.lab import Lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "playbooks" / "lab-debian.yml"


@pytest.fixture(scope="module")
def debian_lab(lab: Lab) -> Iterator[Lab]:
    """The session's lab with the Debian guest as mailhost; LabOS again afterwards."""
    lab.down()
    try:
        lab.up(guest="debian")
        yield lab
    finally:
        lab.down()
        lab.up()


def imap_view(lab: Lab) -> dict[str, Any]:
    view = lab.imap_check(ids=True)
    assert view["ok"], view
    return view


def test_security_update_on_the_twin_then_every_mail_read_back_over_imap(debian_lab: Lab, tmp_path: Path) -> None:
    lab = debian_lab
    sent = lab.send_mails(20, tag="before")
    assert sent["failed"] == 0, sent
    before = imap_view(lab)
    assert before["starttls"] and before["messages"] >= 20
    old_dovecot = lab.guest_exec("prod", "dpkg-query -W -f '${Version}' dovecot-core").stdout.strip()

    state = tmp_path / "state"
    traffic = Traffic(lab, tmp_path / "traffic.jsonl")
    try:
        done = upgrader(state, "start", "mailhost", "--plan", str(PLAN))
    finally:
        seen = traffic.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    record = status(state)
    assert record["phase"] == "completed"

    # the twin fetched through the proxy, yet had no route of its own (the plan's isolation check)
    isolation = record["outputs"]["validate_staging"]["checks"]["no route out but the package proxy"]
    assert isolation["ok"], isolation
    # the new prod: the updated Dovecot, booted through GRUB, serving
    new_dovecot = lab.guest_exec("prod", "dpkg-query -W -f '${Version}' dovecot-core").stdout.strip()
    assert new_dovecot != old_dovecot, (old_dovecot, new_dovecot)
    assert "BOOT_IMAGE=" in lab.guest_exec("prod", "cat /proc/cmdline").stdout

    # the client's side: every accepted mail readable over IMAP, the folder's identity kept
    after = imap_view(lab)
    assert seen["accepted"], seen
    missing = set(seen["accepted"]) - set(after["message_ids"])
    assert not missing, f"{len(missing)} of {len(seen['accepted'])} accepted mails not in IMAP: {sorted(missing)[:5]}"
    assert after["uidvalidity"] == before["uidvalidity"]
    assert after["messages"] >= before["messages"] + len(seen["accepted"])
