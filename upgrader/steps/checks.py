"""Running the plan's checks (validation before cutover, verification after)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from upgrader.errors import CheckFailed, UpgraderError
from upgrader.ports import Command, Probe

if TYPE_CHECKING:
    from upgrader.plan import Check
    from upgrader.steps.base import StepContext


@dataclass(frozen=True)
class CheckResult:
    name: str
    role: str
    ok: bool
    seen: str


def describe(check: "Check") -> str:
    kind = check.kind
    spec = getattr(check, kind)
    if kind == "command":
        return f"{check.name}: `{spec.run}` exits {spec.exit}" + (f", stdout ~ /{spec.stdout}/" if spec.stdout else "")
    if kind == "smtp":
        return f"{check.name}: SMTP banner on port {spec.port} ~ /{spec.banner}/"
    if kind == "imap":
        return f"{check.name}: IMAP banner on port {spec.port} ~ /{spec.banner}/"
    if kind == "http":
        return f"{check.name}: HTTP {spec.path} on port {spec.port} -> {spec.status}"
    return f"{check.name}: TCP port {spec.port} open"


def run_check(ctx: "StepContext", check: "Check", role: str, env: dict[str, str] | None = None) -> CheckResult:
    """`env`: for a command check (the package proxy's http_proxy on the twin)."""
    kind = check.kind
    spec = getattr(check, kind)
    timeout = check.timeout.total_seconds()
    try:
        if kind == "command":
            shell = ctx.ports.shells.connect(role)
            result = shell.run(Command.raw(spec.run), timeout=timeout, env=env or None)
            ok = result.rc == spec.exit and (spec.stdout is None or re.search(spec.stdout, result.stdout) is not None)
            return CheckResult(check.name, role, ok, f"exit {result.rc}: {result.stdout.strip()[:200]}")
        probe = Probe(
            kind=kind,
            port=spec.port,
            host=spec.host,
            expect=getattr(spec, "banner", None) or getattr(spec, "body", None),
            path=getattr(spec, "path", "/"),
            status=getattr(spec, "status", 200),
            timeout=timeout,
        )
        return CheckResult(check.name, role, True, ctx.ports.prober.probe(role, probe))
    except CheckFailed as exc:
        return CheckResult(check.name, role, False, exc.message)
    except UpgraderError as exc:
        return CheckResult(check.name, role, False, f"{type(exc).__name__}: {exc.message}")
