"""The Debian guest's pure parts (no root, no guest): its domain XML, MBR, cache key, the package
proxy's config, plan values and fault checks."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from upgrader.errors import InputError
from upgrader.lab import Fault, Lab
from upgrader.lab import config as C
from upgrader.lab import debian_guest, debian_image, pkgproxy
from upgrader.lab.domain import GuestSpec, domain_xml, parse


def test_debian_domain_boots_its_disk_and_carries_ip_and_kind() -> None:
    spec = debian_guest.spec("mailhost", Path("/l/images/mailhost.qcow2"), C.BR_PROD, Path("/l/logs/m.log"))
    xml = domain_xml(spec)
    assert "<kernel>" not in xml and "<cmdline>" not in xml
    assert "<boot dev='hd'/>" in xml
    assert "<memory unit='MiB'>1024</memory>" in xml and "<vcpu>2</vcpu>" in xml
    assert "<tcg><tb-cache unit='MiB'>256</tb-cache></tcg>" in xml
    info = parse(xml)
    assert info.ip == C.SERVICE_IP and info.guest == "debian"
    assert info.macs == [C.MAILHOST_MAC] and info.segment is C.Segment.PROD


def test_labos_domain_keeps_its_kernel_and_gets_metadata() -> None:
    spec = GuestSpec(name="m", disk=Path("/d"), kernel=Path("/k"), initrd=Path("/i"), bridge=C.BR_PROD,
                     mac=C.MAILHOST_MAC, ip="192.0.2.10", console_log=Path("/c"))
    xml = domain_xml(spec)
    assert "<tcg>" not in xml  # LabOS keeps QEMU's defaults
    info = parse(xml)
    assert info.guest == "labos" and info.ip == "192.0.2.10"


def test_ip_of_a_domain_defined_before_the_metadata_comes_from_labip() -> None:
    xml = ("<domain type='qemu'><name>old</name><os><type>hvm</type><kernel>/k</kernel>"
           "<cmdline>root=/dev/vda labip=192.0.2.10/24</cmdline></os><devices/></domain>")
    info = parse(xml)
    assert info.ip == "192.0.2.10" and info.guest is None


def test_mbr_has_one_bootable_linux_partition_to_the_end() -> None:
    size = 4 * 1024**3
    sector = debian_image.mbr(size)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert sector[:446] == bytes(446)  # boot code: grub-install writes it
    status, ptype, start, count = (sector[446], sector[450],
                                   *struct.unpack("<II", sector[454:462]))
    assert (status, ptype, start) == (0x80, 0x83, 2048)
    assert start + count == size // 512
    assert sector[462:510] == bytes(48)  # the other three entries are empty
    assert debian_image.PART_OFFSET == 2048 * 512


def test_cache_key_follows_debootstrap_version() -> None:
    a = debian_image.cache_key("1.0.128+nmu2+deb12u2")
    assert a == debian_image.cache_key("1.0.128+nmu2+deb12u2")
    assert a != debian_image.cache_key("1.0.141")
    assert re.fullmatch(r"[0-9a-f]{16}", a)


def test_cache_key_follows_the_guest_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "debian"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("mailhost\n")
    monkeypatch.setattr(debian_image, "GUEST_DIR", tree)
    before = debian_image.cache_key("1")
    (tree / "etc/hostname").write_text("other\n")
    assert debian_image.cache_key("1") != before


def test_image_sources_are_the_main_suite_only() -> None:
    assert debian_image.SUITE == "bookworm" and debian_image.MIRROR == "http://deb.debian.org/debian"
    script = debian_image._configure_script("/dev/loop9", "u-u-i-d")
    assert "security" not in script and "bookworm-updates" not in script
    assert "grub-pc/install_devices multiselect /dev/vda" in script
    assert "grub-install --target=i386-pc /dev/loop9" in script
    assert "rm -f /etc/ssh/ssh_host_*" in script  # the cached image holds no host key


def test_partition_path_is_the_offset_debugfs_opens() -> None:
    assert debian_image.partition_path(Path("/x/d.raw")) == "/x/d.raw?offset=1048576"


def test_package_proxy_config_is_loopback_and_debian_only(tmp_path: Path) -> None:
    paths = C.LabPaths(tmp_path)
    p = pkgproxy.ProxyPaths.of(paths)
    text = pkgproxy.config_text(p)
    conf = dict(line.split(": ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert conf["BindAddress"] == "127.0.0.1" and conf["Port"] == "3142"
    assert conf["ForceManaged"] == "1"
    assert conf["CacheDir"] == str(paths.cache / "apt-cacher-ng")  # survives `lab down`
    assert conf["LogDir"] == str(paths.logs / "apt-cacher-ng")
    assert conf["PidFile"] == str(paths.run / "apt-cacher-ng.pid")
    backends = [rule.split(";", 1)[1].strip() for key, rule in conf.items() if key.startswith("Remap-")]
    assert backends == ["http://deb.debian.org/debian/", "http://deb.debian.org/debian-security/"]
    assert re.findall(r"https?://[^/\s]+", text) == ["http://deb.debian.org", "http://deb.debian.org"]
    assert conf["PassThroughPattern"] == "^$nothing^"  # matches no host:port: no CONNECT
    assert pkgproxy.url() == "http://127.0.0.1:3142"


def _lab_with_state(tmp_path: Path, state: dict[str, object] | None) -> Lab:
    if state is not None:
        (tmp_path / "lab.json").write_text(json.dumps(state))
    return Lab(tmp_path)


def test_plan_values_follow_the_recorded_guest_kind(tmp_path: Path) -> None:
    deb = _lab_with_state(tmp_path / "d", None)
    (tmp_path / "d").mkdir()
    (tmp_path / "d/lab.json").write_text(json.dumps({"guest": "debian"}))
    v = deb.plan_values()
    assert deb.guest_kind is C.GuestKind.DEBIAN
    assert v["guest"] == "debian"
    assert v["quiesce"] == "systemctl stop postfix dovecot" and v["resume"] == "systemctl start postfix dovecot"
    assert v["package_proxy"] == "http://127.0.0.1:3142"
    assert v["imap_user"] == "alice" and v["imap_password"] == C.DEBIAN_IMAP_PASSWORD
    assert "update_bundle" not in v and v["service_ip"] == C.SERVICE_IP
    labos = Lab(tmp_path / "none")
    lv = labos.plan_values()
    assert labos.guest_kind is C.GuestKind.LABOS and lv["guest"] == "labos"
    assert lv["quiesce"] == C.QUIESCE_CMD and "update_bundle" in lv and "package_proxy" not in lv


def test_faults_are_checked_per_guest_kind() -> None:
    faults = C.parse_faults(["dovecot-conf-edited", "postfix-broken-after-upgrade"])
    C.check_faults_for(C.GuestKind.DEBIAN, faults)
    with pytest.raises(InputError, match="do not apply to the labos guest"):
        C.check_faults_for(C.GuestKind.LABOS, faults)
    with pytest.raises(InputError, match="upgrade-fails"):
        C.check_faults_for(C.GuestKind.DEBIAN, (Fault.UPGRADE_FAILS,))
    assert set().union(*C.GUEST_FAULTS.values()) == set(Fault)  # every fault belongs to a kind


def test_debian_mailbox_commands_address_alices_mbox() -> None:
    assert "/var/mail/alice" in debian_guest.count_cmd("alice")
    assert debian_guest.count_cmd("a b").count("'/var/mail/a b'") == 1  # quoted
    seed = debian_guest.seed_cmd(3, "alice", "seed")
    assert "Message-ID: <seed-%d@lab>" in seed and "-le 3" in seed


def test_cli_up_takes_a_guest_kind_and_refuses_a_fault_of_the_other_kind(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "upgrader.cli.lab", "--lab-dir", str(tmp_path), *args],
                              capture_output=True, text=True, check=False)

    assert "--guest [labos|debian]" in cli("up", "--help").stdout
    assert cli("up", "--guest", "freebsd").returncode == 2
    r = cli("up", "--guest", "labos", "--fault", "dovecot-conf-edited")
    assert r.returncode == 2 and "do not apply to the labos guest" in r.stderr
    assert not (tmp_path / "lab.json").exists()  # refused before anything was built


def _guest_tree(tmp_path: Path, faults: str) -> Path:
    """The lines of Debian 12's dovecot conf.d files that the fault edits (as shipped)."""
    root = tmp_path / "root"
    for d in ("etc/dovecot/conf.d", "etc/apt/apt.conf.d", "etc/postfix"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/dovecot/conf.d/10-auth.conf").write_text("# Disable LOGIN command\n#disable_plaintext_auth = yes\n")
    (root / "etc/dovecot/conf.d/10-mail.conf").write_text(
        "mail_location = mbox:~/mail:INBOX=/var/mail/%u\nmail_privileged_group = mail\n")
    (root / "etc/postfix/main.cf").write_text("myhostname = mailhost\n")
    (root / "etc/labos-faults").write_text(faults)
    (root / "etc/debian_version").write_text("12.13\n")
    return root


def _lab_faults(root: Path) -> None:
    import os
    import subprocess

    script = Path(debian_image.GUEST_DIR, "usr/local/sbin/lab-faults")
    subprocess.run(["sh", str(script)], env={**os.environ, "LAB_ROOT": str(root)}, check=True)


def test_dovecot_conf_edited_edits_the_conffiles_in_place_once(tmp_path: Path) -> None:
    root = _guest_tree(tmp_path, "dovecot-conf-edited\n")
    _lab_faults(root)
    _lab_faults(root)  # idempotent
    auth = (root / "etc/dovecot/conf.d/10-auth.conf").read_text()
    mail = (root / "etc/dovecot/conf.d/10-mail.conf").read_text()
    assert auth == "# Disable LOGIN command\ndisable_plaintext_auth = no\n"
    assert mail.splitlines()[0] == "mail_location = mbox:~/mail:INBOX=/var/mail/%u:LAYOUT=fs"
    assert not (root / "etc/apt/apt.conf.d/99lab-break-postfix").exists()


def test_dovecot_conf_edited_is_not_applied_again_after_the_upgrade(tmp_path: Path) -> None:
    # the twin boots Debian 13 with the fault still listed: the operator's repaired 2.4 config stays
    root = _guest_tree(tmp_path, "dovecot-conf-edited\n")
    (root / "etc/debian_version").write_text("13.8\n")
    repaired = "auth_allow_cleartext = yes\n"
    (root / "etc/dovecot/conf.d/10-auth.conf").write_text(repaired)
    _lab_faults(root)
    assert (root / "etc/dovecot/conf.d/10-auth.conf").read_text() == repaired


def test_postfix_broken_hook_breaks_main_cf_only_on_13(tmp_path: Path) -> None:
    import subprocess

    root = _guest_tree(tmp_path, "postfix-broken-after-upgrade\n")
    _lab_faults(root)
    hook = root / "etc/apt/apt.conf.d/99lab-break-postfix"
    # apt's own parser reads the hook (as apt in the guest will)
    dump = subprocess.run(["apt-config", "-c", str(hook), "dump", "DPkg::Post-Invoke"], capture_output=True,
                          text=True, check=True).stdout
    ours = [line for line in dump.splitlines() if "lab fault" in line]  # (the host has hooks of its own)
    assert len(ours) == 1
    command = ours[0].split('"', 1)[1].rsplit('"', 1)[0].replace('\\"', '"').replace("/etc/", f"{root}/etc/")
    main_cf = root / "etc/postfix/main.cf"
    (root / "etc/debian_version").write_text("12.13\n")
    subprocess.run(["sh", "-c", command], check=True)
    assert main_cf.read_text() == "myhostname = mailhost\n"  # still 12: nothing
    (root / "etc/debian_version").write_text("13.2\n")
    subprocess.run(["sh", "-c", command], check=True)
    subprocess.run(["sh", "-c", command], check=True)  # every later dpkg run: once only
    assert main_cf.read_text() == ("myhostname = mailhost\n# lab fault postfix-broken-after-upgrade\n"
                                   "inet_interfaces = 192.0.2.99\n")
    (root / "etc/labos-faults").write_text("")
    _lab_faults(root)
    assert not hook.exists()  # switched off: the hook goes
