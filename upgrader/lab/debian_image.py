"""The Debian guest image: Debian 12 (bookworm, main suite only) by debootstrap on the host,
through the lab's package proxy (apt-cacher-ng: a second build downloads nothing).

The image is a partitioned raw disk (MBR, one ext4 partition, 4 GiB sparse) with GRUB in the MBR:
the guest boots its own kernel like a real VM, and the kernel a later `apt-get dist-upgrade`
installs is the one that boots after the reboot (the kernel's postinst runs update-grub in the
guest; debconf's grub-pc/install_devices is /dev/vda, so a grub-pc upgrade reinstalls GRUB there).

Only the `bookworm` suite is in sources.list (no bookworm-security / -updates): the release as it
first shipped, so a later real upgrade has something to do.

Cached by content hash of the inputs (this file, guest/debian, the package list, the suite and
debootstrap's version) under <lab dir>/images/cache/debian-<hash>/. The cached disk holds no
per-lab secret: the SSH host key, root's authorized_keys and the fault switches are written into
each guest's own disk (debugfs on the partition) by make_disk. (It does hold the hash of alice's
fixed lab-only IMAP password, config.DEBIAN_IMAP_PASSWORD, which is in the source anyway.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from upgrader.lab import config as C
from upgrader.lab.errors import LabError
from upgrader.lab.image import GuestFile, copy_guest_tree, tree_digest, write_files
from upgrader.lab.proc import run

GUEST_DIR = Path(__file__).parent / "guest" / "debian"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DISK_BYTES = 4 * 1024**3
SECTOR = 512
PART_START_SECTOR = 2048  # 1 MiB, as fdisk/parted align it
PART_OFFSET = PART_START_SECTOR * SECTOR
# debootstrap --include (minbase adds them to the essential set). dbus: without it systemd-logind
# does not run, nothing handles the ACPI power button and libvirt's reboot/shutdown do nothing.
PACKAGES = ("systemd-sysv", "dbus", "udev", "ifupdown", "iproute2", "openssh-server", "rsync", "postfix",
            "dovecot-imapd", "ssl-cert", "linux-image-amd64", "python3", "curl", "ca-certificates",
            "less", "procps", "python3-apt")  # python3-apt: Ansible's apt module (debian13-ansible.yml)
# installed afterwards in the chroot (debconf must be preseeded first)
BOOT_PACKAGES = ("grub-pc",)
PREFIX = "debian-"


@dataclass(frozen=True)
class DebianImage:
    dir: Path
    key: str
    disk_raw: Path  # partitioned raw disk, GRUB in the MBR, ext4 at PART_OFFSET
    manifest: dict[str, object]


def debootstrap_version() -> str:
    out = run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"], check=False)
    if not out.ok or not out.stdout.strip():
        raise LabError("debootstrap is not installed", hint="apt-get install debootstrap (tools/bootstrap.sh setup)")
    return out.stdout.strip()


def cache_key(debootstrap: str) -> str:
    """Content hash of the inputs: this file, the guest tree, the package lists, suite, mirror
    and debootstrap's version. (The archive's contents are not in it: bookworm's main suite
    only changes at point releases; `lab down --purge` rebuilds.)"""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    tree_digest(h, GUEST_DIR)
    h.update(json.dumps({"packages": PACKAGES, "boot": BOOT_PACKAGES, "suite": SUITE, "mirror": MIRROR,
                         "debootstrap": debootstrap, "disk": DISK_BYTES}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def mbr(disk_bytes: int, start_sector: int = PART_START_SECTOR) -> bytes:
    """A 512-byte MBR with one bootable Linux (0x83) partition from start_sector to the end.
    (Boot code is left zero: grub-install writes it.) CHS fields are the LBA-only marker."""
    sectors = disk_bytes // SECTOR - start_sector
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start_sector, sectors)
    return bytes(446) + entry + bytes(16 * 3) + b"\x55\xaa"


def _image_at(d: Path, key: str) -> DebianImage:
    manifest_path = d / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return DebianImage(dir=d, key=key, disk_raw=d / "disk.raw", manifest=manifest)


def cached_image(cache_dir: Path) -> DebianImage | None:
    key = cache_key(debootstrap_version())
    d = cache_dir / f"{PREFIX}{key}"
    return _image_at(d, key) if (d / "manifest.json").exists() else None


def ensure_image(cache_dir: Path, proxy_url: str,
                 log: Callable[[str], None] = lambda msg: None) -> tuple[DebianImage, bool]:
    """(image, built): the cached Debian image for today's inputs, built if needed (through the
    package proxy at proxy_url). Images for other inputs are removed."""
    key = cache_key(debootstrap_version())
    d = cache_dir / f"{PREFIX}{key}"
    if (d / "manifest.json").exists():
        return _image_at(d, key), False
    log(f"building the Debian {SUITE} image {PREFIX}{key} (debootstrap through {proxy_url})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}build-", dir=cache_dir))
    try:
        work.chmod(0o755)
        figures = _build(work, proxy_url, log)
        manifest = {"key": key, "suite": SUITE, "packages": list(PACKAGES + BOOT_PACKAGES), **figures}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for old in cache_dir.glob(f"{PREFIX}*"):
            if old.is_dir() and old != work and not old.name.startswith(f"{PREFIX}build-"):
                shutil.rmtree(old, ignore_errors=True)
        os.replace(work, d)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _image_at(d, key), True


# --- building ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _loop(disk: Path) -> Iterator[str]:
    dev = run(["losetup", "--find", "--show", "--partscan", str(disk)]).stdout.strip()
    try:
        part = f"{dev}p1"
        if not os.path.exists(part):
            run(["partx", "--add", dev], check=False)  # --partscan at attach does not always see it
        deadline = time.monotonic() + 10
        while not os.path.exists(part) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not os.path.exists(part):
            raise LabError(f"{part} did not appear after losetup --partscan")
        yield dev
    finally:
        run(["partx", "--delete", dev], check=False)
        run(["losetup", "--detach", dev], check=False)


@contextlib.contextmanager
def _mounted(src: str, target: Path, *opts: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *opts, src, str(target)])
    try:
        yield target
    finally:
        if run(["umount", str(target)], check=False).rc != 0:
            run(["umount", "--lazy", str(target)], check=False)


def _chroot(root: Path, script: str, proxy_url: str, timeout: float = 900) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8",
           "http_proxy": proxy_url, "HOME": "/root"}
    return run(["chroot", str(root), "/bin/sh", "-ec", script], env=env, timeout=timeout).stdout


def _build(work: Path, proxy_url: str, log: Callable[[str], None]) -> dict[str, object]:
    disk = work / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
        f.write(mbr(DISK_BYTES))
    figures: dict[str, object] = {}
    with _loop(disk) as dev:
        part = f"{dev}p1"
        run(["mkfs.ext4", "-q", "-F", "-L", "debian-root", part])
        uuid = run(["blkid", "-s", "UUID", "-o", "value", part]).stdout.strip()
        root = work / "mnt"
        with _mounted(part, root):
            started = time.monotonic()
            env = {**os.environ, "http_proxy": proxy_url}
            run(["debootstrap", "--variant=minbase", "--components=main", f"--include={','.join(PACKAGES)}",
                 SUITE, str(root), MIRROR], env=env, timeout=1800,
                hint="needs the Debian registry through the lab's apt-cacher-ng; see its logs")
            figures["debootstrap_seconds"] = round(time.monotonic() - started, 1)
            log(f"debootstrap done in {figures['debootstrap_seconds']} s")
            copy_guest_tree(GUEST_DIR, root)
            (root / "etc/fstab").write_text(f"UUID={uuid} / ext4 errors=remount-ro 0 1\n")
            (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")  # no daemon starts in the chroot
            (root / "usr/sbin/policy-rc.d").chmod(0o755)
            with contextlib.ExitStack() as mounts:
                mounts.enter_context(_mounted("/dev", root / "dev", "--bind"))
                mounts.enter_context(_mounted("proc", root / "proc", "-t", "proc"))
                mounts.enter_context(_mounted("sysfs", root / "sys", "-t", "sysfs"))
                _chroot(root, _configure_script(dev, uuid), proxy_url)
            (root / "usr/sbin/policy-rc.d").unlink()
            figures["rootfs_bytes"] = int(run(["du", "-sxb", str(root)]).stdout.split()[0])
    return figures


def _configure_script(dev: str, uuid: str) -> str:
    """Runs in the chroot: GRUB onto the loop device, the services' config, the lab user."""
    boot = " ".join(BOOT_PACKAGES)
    return f"""
echo 'grub-pc grub-pc/install_devices_empty boolean true' | debconf-set-selections
echo 'grub-pc grub-pc/install_devices multiselect' | debconf-set-selections
apt-get -q update
apt-get -q -y -o Dpkg::Options::=--force-confold install {boot}
grub-install --target=i386-pc {dev}
update-grub
sed -i -E 's#root=/dev/loop[0-9]+p1#root=UUID={uuid}#g' /boot/grub/grub.cfg
grep -q 'root=UUID={uuid}' /boot/grub/grub.cfg
# in the guest, a grub-pc upgrade reinstalls GRUB onto its disk
echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | debconf-set-selections
echo 'grub-pc grub-pc/install_devices_empty boolean false' | debconf-set-selections
apt-get clean
rm -rf /var/lib/apt/lists/*
# Postfix: mailhost's domain, clients from the lab's segment, delivery to /var/mail/<user> (mbox)
postconf -e 'myhostname = mailhost' 'mydomain = lab' 'myorigin = mailhost' \
  'mydestination = mailhost, localhost' 'mynetworks = 127.0.0.0/8 {C.SERVICE_IP.rsplit('.', 1)[0]}.0/24' \
  'inet_interfaces = all' 'inet_protocols = ipv4' 'relayhost =' 'smtpd_banner = $myhostname ESMTP' \
  'always_add_missing_headers = yes'
echo mailhost > /etc/mailname
# the lab's mail user
id alice >/dev/null 2>&1 || useradd -m -s /bin/bash alice
echo 'alice:{C.DEBIAN_IMAP_PASSWORD}' | chpasswd
touch /var/mail/alice && chown alice:mail /var/mail/alice && chmod 0660 /var/mail/alice
# no secrets in the cached image: the lab writes the host key and authorized_keys per guest;
# the TLS snakeoil pair (Postfix, Dovecot) is made at first boot by lab-snakeoil.service
rm -f /etc/ssh/ssh_host_* /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
mkdir -p /root/.ssh && chmod 700 /root/.ssh && : > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
: > /etc/ssh/ssh_host_ed25519_key && chmod 600 /etc/ssh/ssh_host_ed25519_key
: > /etc/ssh/ssh_host_ed25519_key.pub
: > {C.FAULTS_FILE}
: > /etc/machine-id
systemctl enable lab-faults.service lab-snakeoil.service
# nothing to reach from the lab: no timers that try the network or churn the disk under TCG
systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
echo 'root:*' | chpasswd -e
"""


# --- per-guest disks --------------------------------------------------------------------------


def partition_path(raw: Path) -> str:
    """debugfs/e2fsprogs address of the ext4 partition inside the raw disk."""
    return f"{raw}?offset={PART_OFFSET}"


def make_disk(image: DebianImage, dest: Path, files: Sequence[GuestFile]) -> None:
    """A standalone qcow2 disk for one guest: the cached disk plus its per-guest files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_raw = dest.with_name(dest.name + ".raw.tmp")
    tmp_qcow = dest.with_name(dest.name + ".tmp")
    try:
        run(["cp", "--sparse=always", str(image.disk_raw), str(tmp_raw)])
        write_files(tmp_raw, files, device=partition_path(tmp_raw))
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_raw), str(tmp_qcow)], timeout=600)
        os.replace(tmp_qcow, dest)
    finally:
        tmp_raw.unlink(missing_ok=True)
        tmp_qcow.unlink(missing_ok=True)
