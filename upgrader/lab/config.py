"""The lab's fixed names, addresses and paths. Everything the lab creates starts with `upg`
(namespaces, bridges, veths) or lives under the lab dir (default /var/lib/upgrader-lab).

Only TEST-NET-1 addresses (192.0.2.0/24, RFC 5737) are used, and only inside the lab's own
network namespaces: the host namespace has no address or route into them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

PREFIX = "upg"
DEFAULT_LAB_DIR = Path("/var/lib/upgrader-lab")
LAB_DIR_ENV = "UPGRADER_LAB_DIR"

# network namespaces
NS_LAB = "upg-lab"  # libvirtd, virtlogd, the bridges and the guests' taps
NS_ACC_PROD = "upg-acc-prod"  # the orchestrator's declared path into the production segment
NS_ACC_STG = "upg-acc-stg"  # ... into the staging segment
NS_CLIENT = "upg-client"  # traffic probes (SMTP client) on the production segment
NAMESPACES = (NS_LAB, NS_ACC_PROD, NS_ACC_STG, NS_CLIENT)

# bridges (in NS_LAB)
BR_PROD = "upgprod0"
BR_STG = "upgstg0"

SUBNET_PREFIXLEN = 24
SERVICE_IP = "192.0.2.10"  # mailhost, on prod; its twin has the same IP on staging
CLIENT_IP = "192.0.2.100"
ACCESS_IP = "192.0.2.250"  # the access namespace's address, on both segments
ACCESS_MAC = "52:54:00:c0:02:fa"  # ... and its MAC, also the same on both
MAILHOST = "mailhost"
MAILHOST_MAC = "52:54:00:c0:02:0a"
GUEST_MEMORY_MIB = 512
SSH_USER = "root"
SSH_PORT = 22
SMTP_PORT = 25
MAILSINK_PORT = 2525  # the lab's SMTP sink for customer notices, on the host's 127.0.0.1
# the lab's package proxy (apt-cacher-ng, Debian registry only) on the host's loopback
PKG_PROXY_HOST = "127.0.0.1"
PKG_PROXY_PORT = 3142

# guest-side commands the plan uses
QUIESCE_CMD = "/etc/init.d/smtpd stop"
RESUME_CMD = "/etc/init.d/smtpd start"
SMTP_CHECK_CMD = "/usr/sbin/smtp-check"  # run on the guest: EHLO/QUIT to 127.0.0.1:25
FAULTS_FILE = "/etc/labos-faults"  # both guest kinds

# the Debian guest (`lab up --guest debian`)
DEBIAN_MEMORY_MIB = 1024
DEBIAN_VCPUS = 2
DEBIAN_TB_CACHE_MIB = 256  # QEMU's TCG default (1 GiB) made QEMU's RSS 1.6 GiB for this guest
DEBIAN_IMAP_USER = "alice"
DEBIAN_IMAP_PASSWORD = "lab-alice-imap"  # a lab-only password (the IMAP login of alice@mailhost)
DEBIAN_QUIESCE_CMD = "systemctl stop postfix dovecot"
DEBIAN_RESUME_CMD = "systemctl start postfix dovecot"
# run on the guest: the SMTP banner from 127.0.0.1:25 (bash's /dev/tcp; no extra package)
DEBIAN_SMTP_CHECK_CMD = ("timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/25; read -r l <&3; "
                         "echo \"$l\"; case $l in 220*) printf \"QUIT\\r\\n\" >&3;; *) exit 1;; esac'")
RELEASE_FILE = "/etc/labos-release"


class Segment(str, Enum):
    PROD = "prod"
    STAGING = "staging"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SegmentNet:
    segment: Segment
    bridge: str
    access_ns: str
    veth_bridge_side: str  # in NS_LAB, enslaved to the bridge
    veth_ns_side: str  # in access_ns, carries ACCESS_IP


SEGMENTS: dict[Segment, SegmentNet] = {
    Segment.PROD: SegmentNet(Segment.PROD, BR_PROD, NS_ACC_PROD, "upgpa0", "upgpa1"),
    Segment.STAGING: SegmentNet(Segment.STAGING, BR_STG, NS_ACC_STG, "upgsa0", "upgsa1"),
}
CLIENT_VETH_BRIDGE_SIDE = "upgpc0"
CLIENT_VETH_NS_SIDE = "upgpc1"


class GuestKind(str, Enum):
    """What the lab's mailhost runs (`lab up --guest`); recorded in lab.json."""

    LABOS = "labos"  # busybox + a shell SMTP server, the host's kernel (fast, the default)
    DEBIAN = "debian"  # Debian 12: systemd, Postfix, Dovecot, OpenSSH; boots its own disk (GRUB)

    def __str__(self) -> str:
        return self.value


class Fault(str, Enum):
    """Lab-only fault switches, one per line in /etc/labos-faults on the guest."""

    UPGRADE_FAILS = "upgrade-fails"  # `labos-update install` phase 2 exits non-zero midway
    MAIL_BROKEN_AFTER_UPGRADE = "mail-broken-after-upgrade"  # smtpd refuses to start at release 2
    NO_RETURN_AFTER_REBOOT = "no-return-after-reboot"  # boot stalls after the upgrade reboot
    # the ports rebuild fails until a person adds `mailfilter: LIBMILTER=6` to /etc/labos-ports.conf
    PORT_BROKEN = "port-broken"
    # Debian guest: Dovecot's conf.d/10-auth.conf and 10-mail.conf edited in place (2.3 settings):
    # the real 12 -> 13 upgrade leaves dovecot-core half-configured
    DOVECOT_CONF_EDITED = "dovecot-conf-edited"
    # Debian guest: an apt hook breaks postfix's main.cf once the release is 13
    POSTFIX_BROKEN_AFTER_UPGRADE = "postfix-broken-after-upgrade"

    def __str__(self) -> str:
        return self.value


GUEST_FAULTS: dict[GuestKind, frozenset[Fault]] = {
    GuestKind.LABOS: frozenset({Fault.UPGRADE_FAILS, Fault.MAIL_BROKEN_AFTER_UPGRADE,
                                Fault.NO_RETURN_AFTER_REBOOT, Fault.PORT_BROKEN}),
    GuestKind.DEBIAN: frozenset({Fault.DOVECOT_CONF_EDITED, Fault.POSTFIX_BROKEN_AFTER_UPGRADE}),
}


def check_faults_for(kind: GuestKind, faults: tuple[Fault, ...]) -> None:
    from upgrader.errors import InputError

    wrong = [f.value for f in faults if f not in GUEST_FAULTS[kind]]
    if wrong:
        known = ", ".join(sorted(f.value for f in GUEST_FAULTS[kind]))
        raise InputError(f"lab fault(s) {', '.join(wrong)} do not apply to the {kind} guest",
                         hint=f"faults of the {kind} guest: {known}")


def parse_faults(names: object) -> tuple[Fault, ...]:
    from upgrader.errors import InputError

    out: list[Fault] = []
    for name in names or ():  # type: ignore[attr-defined]
        try:
            fault = Fault(str(name))
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise InputError(f"unknown lab fault {name!r}", hint=f"known faults: {known}") from None
        if fault not in out:
            out.append(fault)
    return tuple(out)


@dataclass(frozen=True)
class LabPaths:
    """Where the lab keeps things. `images/cache` survives `lab down` (not `--purge`)."""

    root: Path

    @classmethod
    def resolve(cls, lab_dir: str | os.PathLike[str] | None = None) -> LabPaths:
        chosen = lab_dir or os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR
        return cls(Path(chosen).absolute())

    # top level
    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def cache(self) -> Path:
        return self.images / "cache"

    # libvirt's private tree (bind-mounted over /etc/libvirt, /run/libvirt, ... for libvirtd)
    @property
    def libvirt_etc(self) -> Path:
        return self.etc / "libvirt"

    @property
    def libvirt_run(self) -> Path:
        return self.run / "libvirt"

    @property
    def libvirt_lib(self) -> Path:
        return self.root / "lib" / "libvirt"

    @property
    def libvirt_log(self) -> Path:
        return self.logs / "libvirt"

    @property
    def libvirt_cache(self) -> Path:
        return self.cache / "libvirt"  # qemu capabilities cache: kept, makes a warm start faster

    @property
    def libvirt_socket(self) -> Path:
        return self.libvirt_run / "libvirt-sock"

    @property
    def libvirtd_pid(self) -> Path:
        return self.run / "libvirtd.pid"

    @property
    def mailsink_pid(self) -> Path:
        return self.run / "mailsink.pid"

    @property
    def mail(self) -> Path:
        """What the lab's SMTP sink received (customer notices), one .eml per message."""
        return self.root / "mail"

    @property
    def virtlogd_pid(self) -> Path:
        return self.run / "virtlogd.pid"

    @property
    def created_dirs(self) -> Path:
        return self.run / "created-mountpoints"

    # keys
    @property
    def ssh_key(self) -> Path:
        return self.keys / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.keys / "known_hosts"

    @property
    def host_key(self) -> Path:
        return self.keys / "ssh_host_ed25519_key.dropbear"

    @property
    def host_key_pub(self) -> Path:
        return self.keys / "ssh_host_ed25519_key.pub"

    def disk(self, name: str) -> Path:
        return self.images / f"{name}.qcow2"

    def console_log(self, name: str) -> Path:
        return self.logs / f"{name}.console.log"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.libvirt_socket}"
