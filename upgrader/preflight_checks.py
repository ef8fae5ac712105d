"""Everything checked before a run is created: read-only, against the real systems (or the
fakes), every problem reported together. `upgrader preflight HOST --plan FILE` prints the
report; `start` runs the same checks before it creates the run (nothing is created when one
fails); the run's own preflight step checks hypervisor, domain, space and SSH again on resume.

    report = run_checks(plan, ports, now)
    for check in report.checks: print(check.ok, check.name, check.detail)
    report.raise_if_inhibited()     # PreflightFailed: exit 5 if libvirt or SSH did not answer, else 1

The checks: the plan's SSH key and known_hosts files; the window has an occurrence to come that
can take a cutover; libvirt answers; the domain is there and running (and is the claimed VM);
no domain has the twin's name; free space for overlays; free memory for the twin; SSH to prod;
the tools the sync needs on prod (rsync, ssh-keygen or dropbearkey, ssh or dbclient - the twin
is prod's clone, so it has what prod has); the sync paths exist on prod.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from upgrader.errors import InfraError, UpgraderError
from upgrader.plan_checks import window_problem
from upgrader.plan_files import plan_file_problems, plan_files
from upgrader.ports import DomainInfo, cmd

if TYPE_CHECKING:
    from upgrader.plan import Plan
    from upgrader.ports import Hypervisor, Shell
    from upgrader.steps.base import Ports

__all__ = ["MIN_FREE_BYTES", "TOOLS", "CheckResult", "PreflightFailed", "PreflightReport", "overlay_space", "run_checks"]

# Overlays start empty but grow with every write during the upgrade; ask for a sane minimum.
MIN_FREE_BYTES = 256 * 1024 * 1024

# (what, shell test on prod): what the sync needs (adapters/rsync_syncer.py)
TOOLS: tuple[tuple[str, str], ...] = (
    ("rsync", "command -v rsync"),
    ("ssh-keygen or dropbearkey (the sync key)", "command -v ssh-keygen || command -v dropbearkey"),
    ("ssh or dbclient (rsync's remote shell)", "command -v ssh || command -v dbclient"),
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    unreachable: bool = False  # libvirt or SSH did not answer (exit 5)


class PreflightFailed(UpgraderError):
    """Preflight found inhibitors (nothing was created). Exit 5 when libvirt or SSH did not
    answer (infrastructure unreachable), 1 otherwise."""

    def __init__(self, report: "PreflightReport", *, hint: str) -> None:
        super().__init__("preflight found inhibitors:\n  - " + "\n  - ".join(report.inhibitors), hint=hint)
        self.report = report
        self.exit_code = 5 if any(c.unreachable for c in report.checks if not c.ok) else 1


@dataclass
class PreflightReport:
    checks: list[CheckResult] = field(default_factory=list)

    def add(self, name: str, problem: str | None, ok_detail: str = "", *, unreachable: bool = False) -> bool:
        self.checks.append(CheckResult(name, problem is None, problem or ok_detail, unreachable and problem is not None))
        return problem is None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def inhibitors(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def raise_if_inhibited(self, hint: str = "nothing was created or changed: fix them, then run the command again") -> None:
        if not self.ok:
            raise PreflightFailed(self, hint=hint)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def overlay_space(plan: "Plan", hv: "Hypervisor", domain: DomainInfo) -> tuple[int, str | None]:
    """Free bytes where the overlays go, and what is wrong if that is below the minimum."""
    directory = plan.source.disk_dir or _dirname(next(iter(domain.disks.values()), "/"))
    free = hv.free_bytes(directory)
    if free >= MIN_FREE_BYTES:
        return free, None
    return free, (f"only {free >> 20} MiB free in {directory}; need {MIN_FREE_BYTES >> 20} MiB for overlays "
                  "(prod's writes go to its new overlay: a full disk would pause it)")


def _dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _files(plan: "Plan", report: PreflightReport) -> None:
    problems = plan_file_problems(plan)
    report.add("plan files", "; ".join(str(p) for p in problems) or None,
               "SSH keys, known_hosts and playbooks readable" if plan_files(plan) else "none named")


def _ansible(plan: "Plan", ports: "Ports", report: PreflightReport) -> None:
    """An `ansible:` upgrade step needs ansible-playbook here (its known_hosts: a plan check)."""
    steps = [i for i, step in enumerate(plan.upgrade) if getattr(step, "ansible", None) is not None]
    if not steps:
        return
    if ports.playbooks is None:
        report.add("ansible", "these ports have no playbook runner")
        return
    try:
        report.add("ansible", None, ports.playbooks.check())
    except UpgraderError as exc:
        report.add("ansible", f"{exc.message} ({exc.hint})" if exc.hint else exc.message)


def _window(plan: "Plan", now: dt.datetime, report: PreflightReport) -> None:
    from upgrader.windows import describe, next_slot

    if plan.window is None:
        return
    found = window_problem(plan.window, now)
    if found is not None:
        report.add("window", f"window.{found[0]}: {found[1]}")
        return
    slot = next_slot(plan.window, now)
    assert slot is not None
    report.add("window", None, f"{describe(plan.window)}; next opens {slot.start:%Y-%m-%d %H:%M} UTC")


def _hypervisor(plan: "Plan", hv: "Hypervisor", report: PreflightReport, vm_uuid: str | None) -> None:
    try:
        version = hv.check()
    except InfraError as exc:
        report.add("libvirt", exc.message, unreachable=True)
        return
    report.add("libvirt", None, version)
    try:
        domain = hv.domain(plan.source.domain)
        if not report.add("domain", None if domain is not None else f"{plan.source.domain} not found at {plan.source.libvirt_uri}",
                          f"{plan.source.domain} found"):
            return
        assert domain is not None
        problem = None
        if vm_uuid is not None and domain.uuid != vm_uuid:
            problem = f"{domain.name} is not the VM this run claimed (uuid {domain.uuid}, recorded {vm_uuid})"
        elif not domain.running:
            problem = f"{domain.name} is not running"
        report.add("domain running", problem, f"{domain.name} running (uuid {domain.uuid})")
        twin = hv.domain(plan.twin_name)
        report.add("twin name free", None if twin is None else f"a domain named {plan.twin_name} already exists",
                   f"no domain {plan.twin_name} yet")
        free, short = overlay_space(plan, hv, domain)
        report.add("disk space", short, f"{free >> 20} MiB free for overlays")
        _memory(hv, domain, report)
    except InfraError as exc:
        report.add("libvirt", exc.message, unreachable=True)
    except UpgraderError as exc:
        report.add("hypervisor", exc.message)


def _memory(hv: "Hypervisor", domain: DomainInfo, report: PreflightReport) -> None:
    free = hv.free_memory()
    if domain.memory and domain.memory > free:
        report.add("memory", f"the twin needs {_gib(domain.memory)} (as much as {domain.name}) but the hypervisor has "
                             f"only {_gib(free)} free: it would not start, or push prod into swap")
    else:
        report.add("memory", None, f"{_gib(free)} free for the twin's {_gib(domain.memory) if domain.memory else '(unknown)'}")


def _prod(plan: "Plan", ports: "Ports", report: PreflightReport) -> None:
    target = plan.ssh.prod
    try:
        shell = ports.shells.connect("prod", wait=0)  # one attempt: a check, not a wait for a reboot
        boot = shell.boot_id()
    except InfraError as exc:
        report.add("SSH to prod", exc.message, unreachable=True)
        return
    except UpgraderError as exc:
        report.add("SSH to prod", exc.message)
        return
    report.add("SSH to prod", None, f"{target.user}@{target.host}:{target.port} (boot id {boot[:8]}…)")
    try:
        _tools(shell, report)
        _paths(plan, shell, report)
    except InfraError as exc:
        report.add("SSH to prod", f"lost while checking: {exc.message}", unreachable=True)


def _tools(shell: "Shell", report: PreflightReport) -> None:
    missing = [what for what, test in TOOLS if not shell.run(cmd(test), timeout=30).ok]
    report.add("tools on prod", ("missing: " + ", ".join(missing) + " (the sync needs them on prod and on its twin)") if missing else None,
               ", ".join(what.split(" (")[0] for what, _ in TOOLS))


def _paths(plan: "Plan", shell: "Shell", report: PreflightReport) -> None:
    missing = [p.path for p in plan.sync.paths if not shell.run(cmd("test -d {}", p.path), timeout=30).ok]
    report.add("sync paths", ("not a directory on prod: " + ", ".join(missing)) if missing else None,
               ", ".join(p.path for p in plan.sync.paths))


def run_checks(plan: "Plan", ports: "Ports", now: dt.datetime, *, vm_uuid: str | None = None) -> PreflightReport:
    """Every check, read-only; a check that cannot be made (libvirt down) is reported, the others
    still run."""
    report = PreflightReport()
    _files(plan, report)
    _ansible(plan, ports, report)
    _window(plan, now, report)
    _hypervisor(plan, ports.hypervisor, report, vm_uuid)
    _prod(plan, ports, report)
    return report
