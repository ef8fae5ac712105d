"""What the lab does differently for the Debian mailhost (`lab up --guest debian`): its disk and
per-lab files, its libvirt spec, its plan values, and shell commands for alice's mailbox.

Mail: Postfix delivers to /var/mail/alice (mbox, Postfix's default) and Dovecot serves it with its
Debian default mail location (INBOX=/var/mail/%u, the same in Dovecot 2.3 and 2.4): no Dovecot
setting is changed from the package's, so the config survives the 12 -> 13 upgrade as shipped.
IMAP login is alice / config.DEBIAN_IMAP_PASSWORD over STARTTLS (the ssl-cert snakeoil cert)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from upgrader.lab import config as C
from upgrader.lab.domain import GuestSpec
from upgrader.lab.image import GuestFile
from upgrader.lab.proc import run

MBOX_DIR = "/var/mail"


def openssh_host_key(dropbear_key: Path) -> tuple[bytes, bytes]:
    """The lab's (dropbear-format) host key as OpenSSH private + public key files: the Debian
    mailhost presents the same host key as LabOS, so known_hosts is the same for both."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lab-hostkey-") as tmp:
        out = Path(tmp) / "key"
        run(["dropbearconvert", "dropbear", "openssh", str(dropbear_key), str(out)])
        out.chmod(0o600)
        pub = run(["ssh-keygen", "-y", "-f", str(out)]).stdout.strip()
        return out.read_bytes(), f"{pub} root@mailhost\n".encode()


def guest_files(paths: C.LabPaths, faults: Sequence[C.Fault]) -> list[GuestFile]:
    private, public = openssh_host_key(paths.host_key)
    return [
        GuestFile("/etc/ssh/ssh_host_ed25519_key", private, 0o600),
        GuestFile("/etc/ssh/ssh_host_ed25519_key.pub", public, 0o644),
        GuestFile("/root/.ssh/authorized_keys", paths.ssh_key.with_suffix(".pub").read_bytes(), 0o600),
        GuestFile(C.FAULTS_FILE, "".join(f"{f}\n" for f in faults).encode(), 0o644),
    ]


def spec(name: str, disk: Path, bridge: str, console_log: Path) -> GuestSpec:
    """Boots from its disk (GRUB), 1 GiB, 2 vCPUs, a 256 MiB TCG translation cache."""
    return GuestSpec(name=name, disk=disk, kernel=None, initrd=None, bridge=bridge, mac=C.MAILHOST_MAC,
                     ip=C.SERVICE_IP, console_log=console_log, memory_mib=C.DEBIAN_MEMORY_MIB,
                     vcpus=C.DEBIAN_VCPUS, guest=C.GuestKind.DEBIAN.value, tb_cache_mib=C.DEBIAN_TB_CACHE_MIB)


def plan_values(package_proxy: str) -> dict[str, Any]:
    """The Debian-specific part of Lab.plan_values()."""
    return {
        "quiesce": C.DEBIAN_QUIESCE_CMD,
        "resume": C.DEBIAN_RESUME_CMD,
        "service_check": C.DEBIAN_SMTP_CHECK_CMD,
        "imap_user": C.DEBIAN_IMAP_USER,
        "imap_password": C.DEBIAN_IMAP_PASSWORD,
        "mailboxes": [f"{MBOX_DIR}/{C.DEBIAN_IMAP_USER}", f"/home/{C.DEBIAN_IMAP_USER}/mail"],
        "package_proxy": package_proxy,
        "release_file": "/etc/debian_version",
    }


def _mbox(mailbox: str) -> str:
    return shlex.quote(f"{MBOX_DIR}/{mailbox}")


def count_cmd(mailbox: str) -> str:
    """Messages in the user's mbox (From_ lines)."""
    return f"grep -c '^From ' {_mbox(mailbox)} 2>/dev/null || true"


def message_ids_cmd(mailbox: str) -> str:
    return f"grep -i '^message-id:' {_mbox(mailbox)} 2>/dev/null || true"


def seed_cmd(count: int, mailbox: str, tag: str) -> str:
    """Append `count` messages to the user's mbox (as a spool that was there before), with the
    mbox's owner and mode kept. Postfix and Dovecot lock the mbox with fcntl + dotlock; this
    takes the dotlock (seeding runs before traffic starts)."""
    box = _mbox(mailbox)
    return (
        f"set -e; f={box}; while ! ln -s $$ $f.lock 2>/dev/null; do sleep 0.1; done; "
        f"i=1; while [ $i -le {int(count)} ]; do "
        f"printf 'From seed@lab Thu Jan  1 00:00:00 2026\\nMessage-ID: <{tag}-%d@lab>\\n"
        f"From: seed@lab\\nSubject: {tag} %d\\n\\n%0512d\\n\\n' $i $i $i >> $f; "
        f"i=$((i + 1)); done; chown {shlex.quote(mailbox)}:mail $f; chmod 0660 $f; rm -f $f.lock"
    )
