"""End-to-end tests of the rehearsal lab (real namespaces, libvirtd and a TCG guest).

Order matters (pytest runs a module top to bottom): the last test tears the lab down and checks
that nothing is left; the session fixture's own `down()` then proves it is idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from upgrader.lab import Fault, Lab, LabError, Segment
from upgrader.lab import config as C
from upgrader.lab import daemons, netns

pytestmark = pytest.mark.lab

UPGRADE_BY_HAND = ["labos-update fetch", "labos-update install", "reboot", "labos-update install",
                   "labos-update install"]


def sh(lab: Lab, cmd: str, target: str = "mailhost", **kw):  # type: ignore[no-untyped-def]
    return lab.guest_exec(target, cmd, **kw)


def upgrade(lab: Lab, target: str = "mailhost", *, stop_after: int | None = None) -> list:  # type: ignore[type-arg]
    """Run the LabOS upgrade by hand over SSH; returns the results (stops at the first failure)."""
    results = []
    for i, step in enumerate(UPGRADE_BY_HAND):
        if stop_after is not None and i >= stop_after:
            break
        if step == "reboot":
            lab.reboot(target, via="ssh", timeout=120)
            continue
        r = sh(lab, step, target, check=False, timeout=60)
        results.append(r)
        if not r.ok:
            break
    return results


def release(lab: Lab, target: str = "mailhost") -> str:
    return sh(lab, f"cat {C.RELEASE_FILE}", target).stdout.strip()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "upgrader.cli.lab", *args], capture_output=True, text=True,
                          timeout=120, check=False)


# --- up, SSH, status ------------------------------------------------------------------------


def test_up_gives_a_running_mailhost_on_prod(lab: Lab) -> None:
    st = lab.status()
    assert st["up"] is True
    assert sorted(st["namespaces"]) == sorted(C.NAMESPACES)
    (guest,) = [g for g in st["guests"] if g["name"] == "mailhost"]
    assert guest["state"] == "running"
    assert guest["segment"] == "prod" and guest["ip"] == C.SERVICE_IP
    assert all(d["alive"] for d in st["daemons"])
    plan = json.loads(lab.paths.state_file.read_text())["plan"]
    assert plan["libvirt_uri"] == lab.uri
    assert plan["staging_bridge"] == C.BR_STG and plan["prod_bridge"] == C.BR_PROD
    assert Path(plan["update_bundle"]).exists()


def test_up_again_is_idempotent_and_reuses_the_guest(lab: Lab) -> None:
    before = lab.boot_id("mailhost")
    started = time.monotonic()
    lab.up()
    assert time.monotonic() - started < 30
    assert lab.boot_id("mailhost") == before


def test_ssh_with_pinned_host_key_paramiko_and_fabric(lab: Lab) -> None:
    target = lab.ssh_target(Segment.PROD)
    client = target.connect()  # RejectPolicy + the lab's known_hosts
    try:
        _, out, _ = client.exec_command("cat /etc/labos-release; id -u")
        assert out.read().decode().split("\n")[:2] == ["LabOS release 1", "0"]
    finally:
        client.close()

    conn = target.fabric_connection()
    try:
        assert conn.run("hostname", hide=True, in_stream=False).stdout.strip() == "mailhost"
    finally:
        conn.close()


def test_ssh_rejects_an_unknown_host_key(lab: Lab, tmp_path: Path) -> None:
    target = lab.ssh_target(Segment.PROD)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = paramiko.SSHClient()
    client.load_host_keys(str(empty))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(target.host, username="root", key_filename=str(target.key_path),
                       sock=paramiko.ProxyCommand(target.proxy_command_expanded), look_for_keys=False,
                       allow_agent=False, timeout=30)
    client.close()


def test_guest_is_key_only(lab: Lab) -> None:
    target = lab.ssh_target(Segment.PROD)
    client = paramiko.SSHClient()
    client.load_host_keys(str(target.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(target.host, username="root", password="root",
                       sock=paramiko.ProxyCommand(target.proxy_command_expanded), look_for_keys=False,
                       allow_agent=False, timeout=30)
    client.close()


def test_cli_status_json_and_ssh_command() -> None:
    st = cli("status", "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["up"] is True
    r = cli("ssh", "mailhost", "--", "cat /etc/labos-release")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "LabOS release 1"
    r = cli("ssh", "mailhost", "--", "exit 3")
    assert r.returncode == 3


# --- mail ----------------------------------------------------------------------------------


def test_fifty_mails_from_the_client_namespace_land_in_the_maildir(lab: Lab) -> None:
    before = lab.count_mails(Segment.PROD, "alice")
    result = lab.send_mails(50, to="alice@mailhost", tag="fifty")
    assert result["sent"] == 50, result
    assert lab.count_mails(Segment.PROD, "alice") == before + 50
    # Maildir: delivered via tmp/ -> new/, nothing left in tmp/; dot-unstuffing worked
    assert sh(lab, "ls /var/mail/alice/tmp | wc -l").stdout.strip() == "0"
    body = sh(lab, "grep -l 'X-Lab-Probe: fifty-7$' /var/mail/alice/new/* | head -1 | xargs cat").stdout
    assert "\n.a line starting with a dot\n.\nend\n" in body


def test_smtp_commands(lab: Lab) -> None:
    script = (
        "import smtplib\n"
        f"s = smtplib.SMTP('{C.SERVICE_IP}', 25, timeout=20)\n"
        "assert s.helo('c')[0] == 250\n"
        "assert s.noop()[0] == 250\n"
        "assert s.docmd('RCPT TO:<x@y>')[0] == 503\n"
        "assert s.mail('a@b')[0] == 250\n"
        "assert s.rset()[0] == 250\n"
        "assert s.docmd('DATA')[0] == 503\n"
        "assert s.docmd('VRFY root')[0] == 502\n"
        "assert s.mail('a@b')[0] == 250 and s.rcpt('Bob.Smith@mailhost')[0] == 250\n"
        "assert s.rcpt('weird/../name@mailhost')[0] == 250\n"
        "assert s.data(b'Subject: t\\r\\n\\r\\nhello\\r\\n')[0] == 250\n"
        "assert s.quit()[0] == 221\n"
    )
    lab.client_exec([sys.executable, "-c", script])
    assert lab.count_mails(Segment.PROD, "bob.smith") == 1
    assert lab.count_mails(Segment.PROD, "mail") >= 1


def test_quiesce_and_resume_commands(lab: Lab) -> None:
    sh(lab, C.QUIESCE_CMD)
    assert lab.smtp_probe(timeout=5)["ok"] is False
    sh(lab, C.RESUME_CMD)
    assert lab.smtp_probe()["ok"] is True


# --- reboot and upgrade ----------------------------------------------------------------------


def test_reboot_through_libvirt_gives_a_new_boot_id(lab: Lab) -> None:
    old = lab.boot_id("mailhost")
    with lab.libvirt_conn() as conn:
        conn.lookupByName("mailhost").reboot(0)  # ACPI: guest powers off, libvirt restarts it
    new = lab.wait_boot("mailhost", old, timeout=120)
    assert new != old
    assert lab.smtp_probe()["ok"] is True
    assert lab.count_mails(Segment.PROD, "alice") >= 50  # the disk kept the mail


def test_labos_upgrade_by_hand(lab: Lab) -> None:
    results = upgrade(lab)
    assert [r.rc for r in results] == [0, 0, 0, 0], [r.describe() for r in results]
    assert "Please reboot" in results[1].stdout
    assert release(lab) == "LabOS release 2"
    assert sh(lab, "/usr/local/bin/mailstat --version").stdout.strip() == "mailstat 2.0"
    assert sh(lab, "test -e /usr/local/bin/labold", check=False).rc == 1
    probe = lab.smtp_probe()
    assert probe["ok"] and "LabOS 2" in probe["banner"]
    before = lab.count_mails(Segment.PROD, "alice")
    assert lab.send_mails(5, tag="after-upgrade")["sent"] == 5
    assert lab.count_mails(Segment.PROD, "alice") == before + 5
    # a further install has nothing to do and says so
    again = sh(lab, "labos-update install", check=False)
    assert again.rc == 0 and "No updates" in again.stdout


# --- staging segment -------------------------------------------------------------------------


def test_twin_with_same_ip_and_mac_lives_on_staging(lab: Lab) -> None:
    target = lab.add_guest("mailhost-twin", Segment.STAGING)
    assert target.segment is Segment.STAGING and target.host == C.SERVICE_IP
    prod_boot = lab.boot_id("prod")
    twin_boot = lab.boot_id("staging")
    assert prod_boot != twin_boot  # same IP, same MAC, same host key: two machines
    assert lab.boot_id("mailhost-twin") == twin_boot
    # the client on prod still talks to prod (release 2 there; the twin is a fresh release 1)
    assert "LabOS 2" in lab.smtp_probe()["banner"]
    assert release(lab, "mailhost-twin") == "LabOS release 1"
    assert "LabOS 1" in sh(lab, C.SMTP_CHECK_CMD, "mailhost-twin").stdout  # validation from inside
    st = {g["name"]: g for g in lab.status()["guests"]}
    assert st["mailhost-twin"]["segment"] == "staging"
    assert st["mailhost-twin"]["macs"] == st["mailhost"]["macs"]


# --- fault switches --------------------------------------------------------------------------


def test_set_faults_over_ssh(lab: Lab) -> None:
    lab.set_faults("mailhost-twin", [Fault.UPGRADE_FAILS, "no-return-after-reboot"])
    assert sh(lab, f"cat {C.FAULTS_FILE}", "mailhost-twin").stdout.split() == [
        "upgrade-fails", "no-return-after-reboot"]
    lab.set_faults("mailhost-twin", [])
    assert sh(lab, f"cat {C.FAULTS_FILE}", "mailhost-twin").stdout == ""
    with pytest.raises(Exception, match="unknown lab fault"):
        lab.set_faults("mailhost-twin", ["disk-on-fire"])


@pytest.mark.full  # 36 s; the e2e upgrade-fails scenario covers it in CI
def test_fault_upgrade_fails(lab: Lab) -> None:
    lab.recreate_mailhost(faults=[Fault.UPGRADE_FAILS])
    results = upgrade(lab)
    assert [r.rc for r in results[:2]] == [0, 0]
    failed = results[-1]
    assert failed.rc != 0 and "upgrade-fails" in failed.stderr
    assert release(lab) == "LabOS release 1"
    assert "state: kernel" in sh(lab, "labos-update status").stdout
    assert lab.smtp_probe()["ok"] is True  # the service itself is unharmed


@pytest.mark.full  # 35 s; test_mail_broken_after_upgrade_fails_validation covers it (full run)
def test_fault_mail_broken_after_upgrade(lab: Lab) -> None:
    lab.recreate_mailhost(faults=[Fault.MAIL_BROKEN_AFTER_UPGRADE])
    assert lab.smtp_probe()["ok"] is True  # release 1: fine
    results = upgrade(lab)
    assert [r.rc for r in results] == [0, 0, 0, 0]
    assert release(lab) == "LabOS release 2"
    assert lab.smtp_probe(timeout=5)["ok"] is False
    start = sh(lab, C.RESUME_CMD, check=False)
    assert start.rc != 0 and "mail-broken-after-upgrade" in start.stderr
    assert sh(lab, C.SMTP_CHECK_CMD, check=False).rc == 1


@pytest.mark.full  # 41 s; the twin-not-back e2e scenario covers it in CI
def test_fault_no_return_after_reboot(lab: Lab) -> None:
    lab.recreate_mailhost(faults=[Fault.NO_RETURN_AFTER_REBOOT])
    results = upgrade(lab, stop_after=2)  # fetch, install (kernel)
    assert [r.rc for r in results] == [0, 0]
    console = lab.paths.console_log("mailhost")
    mark = console.stat().st_size
    sh(lab, "reboot", check=False, timeout=15)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if b"boot stalled" in console.read_bytes()[mark:]:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the guest did not reach the stalled boot")
    with pytest.raises(LabError):
        lab.wait_ssh("mailhost", timeout=10)
    with lab.libvirt_conn() as conn:
        assert conn.lookupByName("mailhost").isActive()  # hung, not gone


# --- teardown (keep last) --------------------------------------------------------------------


def test_down_leaves_nothing_behind(lab: Lab) -> None:
    pids = [d.pid for d in daemons.states(lab.paths) if d.pid] + list(daemons.qemu_pids(lab.paths).values())
    assert len(pids) >= 3  # virtlogd, libvirtd, at least one qemu
    created = lab.paths.created_dirs.read_text().split() if lab.paths.created_dirs.exists() else []

    lab.down()

    assert netns.list_lab_namespaces() == []
    if os.path.isdir("/run/netns"):
        assert not [n for n in os.listdir("/run/netns") if n.startswith("upg")]
    host_links = [str(link.get("ifname")) for link in netns.list_links()]
    assert not [n for n in host_links if n.startswith("upg")]
    for pid in pids:
        assert not daemons._alive(pid), f"pid {pid} still running"
    for mp in created:
        assert not os.path.exists(mp), f"{mp} left behind"
    # only the image cache stays (`lab down --purge` removes it too)
    assert sorted(p.name for p in lab.paths.root.iterdir()) == ["images"]
    assert sorted(p.name for p in lab.paths.images.iterdir()) == ["cache"]
    for d in ("/run", "/tmp", "/dev/shm"):
        assert not [n for n in os.listdir(d) if n.startswith("upg")], f"upg* file in {d}"
    assert lab.status()["up"] is False

    lab.down()  # idempotent
