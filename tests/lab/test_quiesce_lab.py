"""The LabOS quiesce contract on a real guest: `/etc/init.d/smtpd stop` returns only when nothing
writes /var/mail any more. A mail whose SMTP session is in progress when the stop begins is either
written before the stop returns or never acknowledged (docs/operations.md, `sync.quiesce`)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from upgrader.lab import Lab
from upgrader.lab import config as C
from upgrader.lab.proc import ExecResult

pytestmark = pytest.mark.lab

STOP_WAIT = 4  # SMTPD_STOP_WAIT: how long stop waits for a handler busy with a mail
# the state of /var/mail: every file (tmp/ included) with its checksum
SNAPSHOT = "cd /var/mail && find . -type f | sort | xargs -r md5sum"
SEP = "=== snapshot"

# Run in the client namespace. Sessions: A is inside DATA (half the body sent), B is idle after
# HELO, C has MAIL and RCPT but no DATA, D is inside DATA and stalls. Once they are set up it
# touches <ready>, waits (up to 15 s) for B's 421 (the stop has begun; the old stop never sent
# one), then after 0.5 s sends the rest of A. D never sends its end. Prints the replies as JSON.
CLIENT = r"""
import json, socket, sys, time
from pathlib import Path
ip, ready = sys.argv[1], Path(sys.argv[2])

def session(helo):
    s = socket.create_connection((ip, 25), timeout=60)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"HELO " + helo.encode() + b"\r\n")
    assert f.readline().startswith(b"250")
    return s, f

def cmd(sf, line):
    sf[0].sendall(line.encode() + b"\r\n")
    return sf[1].readline().decode().strip()

def line(sf, timeout):
    sf[0].settimeout(timeout)
    try:
        return sf[1].readline().decode().strip()
    except OSError as e:  # timeout or reset
        return "error: %s" % e

def in_data(name):
    sf = session(name)
    assert cmd(sf, "MAIL FROM:<q@client>").startswith("250")
    assert cmd(sf, "RCPT TO:<alice@mailhost>").startswith("250")
    assert cmd(sf, "DATA").startswith("354")
    sf[0].sendall(("Subject: %s\r\nX-Lab-Probe: quiesce-%s\r\n\r\nfirst half\r\n" % (name, name)).encode())
    return sf

a, b = in_data("A"), session("B")
c = session("C")
assert cmd(c, "MAIL FROM:<q@client>").startswith("250") and cmd(c, "RCPT TO:<alice@mailhost>").startswith("250")
d = in_data("D")
ready.touch()
out = {"B": line(b, 15)}
time.sleep(0.5)
a[0].sendall(b"second half\r\n.\r\n")
out["A"] = line(a, 10)
out["A_next"] = line(a, 10)
out["C"] = line(c, 10)
out["D"] = line(d, 10)
print(json.dumps(out))
"""


def snapshot(text: str) -> dict[str, str]:
    """md5sum lines -> {path: checksum}"""
    return {path: digest for digest, path in (ln.split(None, 1) for ln in text.splitlines() if ln.strip())}


def delivered(lab: Lab, tag: str) -> list[str]:
    r = lab.guest_exec("mailhost", f"grep -l 'X-Lab-Probe: quiesce-{tag}$' /var/mail/alice/new/* || true")
    return [f"./{p[len('/var/mail/'):]}" for p in r.stdout.split()]


def test_stop_waits_for_the_mail_in_progress_and_nothing_writes_after_it(lab: Lab, tmp_path: Path) -> None:
    try:
        stop_with_sessions_open(lab, tmp_path)
    finally:
        lab.guest_exec("mailhost", C.RESUME_CMD)  # idempotent: "already running"
    assert lab.smtp_probe()["ok"] is True


def stop_with_sessions_open(lab: Lab, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    client: dict[str, ExecResult] = {}
    t = threading.Thread(target=lambda: client.setdefault(
        "r", lab.client_exec([sys.executable, "-c", CLIENT, C.SERVICE_IP, str(ready)], timeout=90, check=False)))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert t.is_alive() and time.monotonic() < deadline, client.get("r")
            time.sleep(0.05)
        # the snapshot is taken in the same shell, the moment stop returns
        r = lab.guest_exec("mailhost", f"s=$(cut -d' ' -f1 /proc/uptime); SMTPD_STOP_WAIT={STOP_WAIT} "
                                       f"{C.QUIESCE_CMD}; e=$(cut -d' ' -f1 /proc/uptime); "
                                       f"echo \"took $s $e\"; echo '{SEP}'; {SNAPSHOT}", timeout=60)
    finally:
        t.join(90)
    replies = json.loads(client["r"].stdout.strip().splitlines()[-1])
    head, _, snap = r.stdout.partition(SEP + "\n")
    took = [float(x) for x in head.split("took ")[1].split()[:2]]
    at_return = snapshot(snap)
    print(f"smtpd stop with A in DATA and D stalled (wait {STOP_WAIT} s): {took[1] - took[0]:.2f} s; replies {replies}")
    time.sleep(1.0)
    after = snapshot(lab.guest_exec("mailhost", SNAPSHOT).stdout)
    # after stop returned, /var/mail did not change (the old stop: A's mail landed later)
    assert after == at_return
    # A: acknowledged, so it was written before stop returned
    assert replies["A"].startswith("250"), replies
    (a_file,) = delivered(lab, "A")
    assert a_file in at_return
    assert replies["A_next"].startswith("421"), replies  # and then it was told to go
    # B and C: no mail in progress, told to go at once
    assert replies["B"].startswith("421") and replies["C"].startswith("421"), replies
    # D: stalled inside DATA, cut after the wait: never acknowledged, not delivered
    assert not replies["D"].startswith("250"), replies
    assert delivered(lab, "D") == []
    # stop waited for A, then for D up to STOP_WAIT, not much longer
    assert "cut after" in head
    assert STOP_WAIT <= took[1] - took[0] < STOP_WAIT + 3, head
    # no listener: a new connection is refused
    assert lab.smtp_probe(timeout=5)["ok"] is False


def test_stop_with_no_connection_is_quick(lab: Lab) -> None:
    r = lab.guest_exec("mailhost", f"s=$(cut -d' ' -f1 /proc/uptime); {C.QUIESCE_CMD}; "
                                   "e=$(cut -d' ' -f1 /proc/uptime); echo \"took $s $e\"")
    try:
        s, e = (float(x) for x in r.stdout.split("took ")[1].split()[:2])
        print(f"smtpd stop with no connection: {e - s:.2f} s")
        assert "smtpd: stopped" in r.stdout
        assert e - s < 1.0, r.stdout
    finally:
        lab.guest_exec("mailhost", C.RESUME_CMD)
