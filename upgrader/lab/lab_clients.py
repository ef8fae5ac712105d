"""The lab's client side (part of `Lab`): commands in the client namespace, SMTP and IMAP from a
client's point of view, and what is in alice's mailbox on a guest (LabOS Maildir, Debian mbox)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from upgrader.lab import config as C
from upgrader.lab import debian_guest, netns
from upgrader.lab.errors import LabNotUp
from upgrader.lab.proc import CommandFailed, ExecResult, run


class LabClients:
    """Mixed into `Lab`, which provides guest_kind and guest_exec."""

    if TYPE_CHECKING:
        @property
        def guest_kind(self) -> C.GuestKind: ...
        def guest_exec(self, name_or_segment: str | C.Segment, cmd: str, *, timeout: float = 60.0,
                       check: bool = True, input: str | None = None) -> ExecResult: ...


    def client_exec(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 120.0,
                    check: bool = True) -> ExecResult:
        """Run argv inside the client namespace (upg-client, 192.0.2.100 on the prod segment)."""
        if not netns.ns_exists(C.NS_CLIENT):
            raise LabNotUp(f"namespace {C.NS_CLIENT} does not exist")
        return run(["ip", "netns", "exec", C.NS_CLIENT, *argv], input=input, timeout=timeout, check=check)

    def client_popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start argv in the client namespace without waiting (e.g. traffic during a cutover)."""
        return subprocess.Popen(["ip", "netns", "exec", C.NS_CLIENT, *argv], **kwargs)

    def mailclient_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "upgrader.lab.mailclient", *args]

    def send_mails(self, count: int, *, to: str = "alice@mailhost", tag: str = "probe",
                   each: bool = False, host: str = C.SERVICE_IP, timeout: float = 300.0) -> dict[str, Any]:
        """Send count mails from the client namespace with smtplib; returns the JSON summary
        (sent, failed, errors, seconds)."""
        args = ["--host", host, "--count", str(count), "--to", to, "--tag", tag]
        if each:
            args.append("--each")
        result = self.client_exec(self.mailclient_argv(*args), timeout=timeout, check=False)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise CommandFailed(result) from exc

    def smtp_probe(self, host: str = C.SERVICE_IP, timeout: float = 15.0) -> dict[str, Any]:
        """Banner + EHLO + QUIT from the client namespace: {"ok": bool, "banner"|"error": ...}."""
        result = self.client_exec(self.mailclient_argv("--probe", "--host", host, "--timeout", str(timeout)),
                                  timeout=timeout + 30, check=False)
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise CommandFailed(result) from exc

    def imap_check(self, host: str = C.SERVICE_IP, *, ids: bool = False, timeout: float = 15.0) -> dict[str, Any]:
        """IMAP STARTTLS login as alice from the client namespace (Debian guest):
        {"ok", "uidvalidity", "messages"[, "message_ids"]} or {"ok": false, "error"}."""
        argv = [sys.executable, "-m", "upgrader.lab.imapcheck", "--host", host, "--timeout", str(timeout)]
        result = self.client_exec(argv, timeout=timeout + 60, check=False)
        try:
            view: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise CommandFailed(result) from exc
        if not ids:
            view.pop("message_ids", None)
        return view

    def message_ids(self, name_or_segment: str | C.Segment = C.Segment.PROD, mailbox: str = "alice") -> set[str]:
        """The Message-IDs of every message in alice's mailbox on a guest (LabOS: the Maildir
        /var/mail/<mailbox>; Debian: the mbox /var/mail/<mailbox>)."""
        if self.guest_kind is C.GuestKind.DEBIAN:
            out = self.guest_exec(name_or_segment, debian_guest.message_ids_cmd(mailbox), timeout=120).stdout
            return {line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}
        out = self.guest_exec(
            name_or_segment,
            f"cat /var/mail/{mailbox}/new/* /var/mail/{mailbox}/cur/* 2>/dev/null | grep -i '^message-id:' || true",
            timeout=120,
        ).stdout
        return {line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}

    def seed_mails(self, count: int, name_or_segment: str | C.Segment = C.Segment.PROD, mailbox: str = "alice",
                   tag: str = "seed") -> None:
        """Write `count` messages straight into a guest's mailbox (a spool that was there before)."""
        if self.guest_kind is C.GuestKind.DEBIAN:
            self.guest_exec(name_or_segment, debian_guest.seed_cmd(count, mailbox, tag), timeout=300)
            return
        self.guest_exec(
            name_or_segment,
            f"d=/var/mail/{mailbox}/new; mkdir -p $d; i=1; while [ $i -le {int(count)} ]; do "
            f"printf 'Message-ID: <{tag}-%d@lab>\\nSubject: {tag} %d\\n\\n%0512d\\n' $i $i $i > $d/{tag}.$i; "
            "i=$((i + 1)); done",
            timeout=300,
        )

    def count_mails(self, name_or_segment: str | C.Segment = C.Segment.PROD, mailbox: str = "alice") -> int:
        """Messages in alice's mailbox on a guest (see message_ids)."""
        if self.guest_kind is C.GuestKind.DEBIAN:
            return int(self.guest_exec(name_or_segment, debian_guest.count_cmd(mailbox)).stdout.strip() or 0)
        out = self.guest_exec(
            name_or_segment,
            f"ls /var/mail/{mailbox}/new /var/mail/{mailbox}/cur 2>/dev/null | grep -c '^[0-9]' || true",
        ).stdout.strip()
        return int(out or 0)

