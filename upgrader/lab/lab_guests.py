"""Reaching the lab's guests over SSH (part of `Lab`): targets by segment or domain name, commands
on a guest, waiting for SSH and for a new boot, reboots, the lab's fault switches."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import libvirt

from upgrader.lab import config as C
from upgrader.lab.domain import parse
from upgrader.lab.errors import LabError, LabTimeout
from upgrader.lab.proc import ExecResult, run
from upgrader.lab.ssh import SSHTarget, run_on


class LabGuests:
    """Mixed into `Lab`, which provides paths, guest_kind and libvirt_conn."""

    paths: C.LabPaths
    if TYPE_CHECKING:
        @property
        def guest_kind(self) -> C.GuestKind: ...
        def libvirt_conn(self) -> contextlib.AbstractContextManager[libvirt.virConnect]: ...


    def ssh_target(self, segment: C.Segment | str) -> SSHTarget:
        seg = C.Segment(str(segment))
        return SSHTarget(segment=seg, host=C.SERVICE_IP, port=C.SSH_PORT, user=C.SSH_USER,
                         key_path=self.paths.ssh_key, known_hosts=self.paths.known_hosts)

    def target(self, name_or_segment: str | C.Segment) -> SSHTarget:
        """SSH target for "prod"/"staging", or for a domain name (its segment = its bridge)."""
        key = str(name_or_segment)
        if key in {s.value for s in C.Segment}:
            return self.ssh_target(key)
        with self.libvirt_conn() as conn:
            try:
                info = parse(conn.lookupByName(key).XMLDesc())
            except libvirt.libvirtError as exc:
                raise LabError(f"no domain {key!r} in the lab",
                               hint="`upgrader lab status` lists the guests") from exc
        if info.segment is None:
            raise LabError(f"domain {key!r} is on no lab bridge ({', '.join(info.bridges) or 'no NIC'})")
        t = self.ssh_target(info.segment)
        if info.ip and info.ip != t.host:
            t = SSHTarget(t.segment, info.ip, t.port, t.user, t.key_path, t.known_hosts)
        return t

    def guest_exec(self, name_or_segment: str | C.Segment, cmd: str, *, timeout: float = 60.0,
                   check: bool = True, input: str | None = None) -> ExecResult:
        """Run a shell command on a guest over SSH (a fresh connection)."""
        return run_on(self.target(name_or_segment), cmd, timeout=timeout, check=check, input=input)

    def wait_ssh(self, name_or_segment: str | C.Segment, timeout: float = 120.0) -> str:
        """Poll (inside the access namespace) until the guest's SSH banner shows. Returns it."""
        t = self.target(name_or_segment)
        ns = C.SEGMENTS[t.segment].access_ns
        result = run(["ip", "netns", "exec", ns, sys.executable, "-m", "upgrader.lab.proxy", t.host,
                      str(t.port), "--wait-banner", str(timeout)], check=False, timeout=timeout + 15)
        if not result.ok:
            raise LabTimeout(result.stderr.strip() or f"no SSH banner from {t.host}",
                             hint=f"`upgrader lab console {name_or_segment}` shows the guest's console")
        return result.stdout.strip()

    def boot_id(self, name_or_segment: str | C.Segment, timeout: float = 30.0) -> str:
        return self.guest_exec(name_or_segment, "cat /proc/sys/kernel/random/boot_id",
                               timeout=timeout).stdout.strip()

    def wait_boot(self, name_or_segment: str | C.Segment, old_boot_id: str | None,
                  timeout: float = 120.0) -> str:
        """Poll until the guest answers over SSH with a boot id different from old_boot_id.
        While the old boot still answers, poll once a second; while SSH is down, wait for the
        banner inside the access namespace (one process polling every 0.2 s)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            try:
                bid = self.boot_id(name_or_segment, timeout=max(5.0, min(20.0, left)))
            except LabError as exc:
                last = exc
                with contextlib.suppress(LabError):
                    self.wait_ssh(name_or_segment, timeout=max(1.0, deadline - time.monotonic()))
                continue
            if bid and bid != old_boot_id:
                return bid
            time.sleep(1.0)  # the old boot still answers: it has not gone down yet
        raise LabTimeout(f"{name_or_segment} did not come back with a new boot id within {timeout:.0f} s"
                         + (f" (last: {last})" if last else ""))

    def reboot(self, name: str = C.MAILHOST, *, via: str = "libvirt", timeout: float = 120.0) -> str:
        """Reboot a guest (via libvirt's ACPI reboot, or `reboot` over SSH); returns the new boot id."""
        old = self.boot_id(name)
        if via == "libvirt":
            with self.libvirt_conn() as conn:
                conn.lookupByName(name).reboot(0)
        elif via == "ssh":
            with contextlib.suppress(LabError):
                self.guest_exec(name, "reboot", timeout=15, check=False)
        else:
            raise ValueError(via)
        return self.wait_boot(name, old, timeout=timeout)

    def set_faults(self, name_or_segment: str | C.Segment, faults: Iterable[str | C.Fault]) -> None:
        """Set /etc/labos-faults on a guest to exactly these faults."""
        wanted = C.parse_faults(faults)
        content = "".join(f"{f}\n" for f in wanted)
        C.check_faults_for(self.guest_kind, wanted)
        apply = " && /usr/local/sbin/lab-faults" if self.guest_kind is C.GuestKind.DEBIAN else ""
        self.guest_exec(name_or_segment,
                        f"cat > {C.FAULTS_FILE}.new && mv {C.FAULTS_FILE}.new {C.FAULTS_FILE}{apply} && sync",
                        input=content)

