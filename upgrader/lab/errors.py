"""Errors raised by the rehearsal lab. All are InfraError (exit code 5): the lab's own
infrastructure (namespaces, libvirtd, the guest) refused or is unreachable."""

from __future__ import annotations

from upgrader.errors import InfraError


class LabError(InfraError):
    """Something the lab needs failed (a command, a daemon, the guest)."""

    default_hint = "`upgrader lab status` shows what is up; logs are under <lab dir>/logs"


class LabNotUp(LabError):
    default_hint = "start it with `upgrader lab up`"


class LabTimeout(LabError):
    """A readiness poll (SSH banner, boot id, daemon socket) gave up."""

    default_hint = "`upgrader lab console mailhost` shows the guest's serial console"
