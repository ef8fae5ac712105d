"""validate_staging: the plan's checks on the twin; differential checks also run on prod and a
check that passes on prod but fails on the twin is a regression."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upgrader.errors import CheckFailed
from upgrader.events import Notice
from upgrader.phases import Phase
from upgrader.steps import packages
from upgrader.steps.base import Outcome, StepContext
from upgrader.notify import Kind
from upgrader.steps.checks import describe, run_check
from upgrader.steps.notices import tell_about_window

if TYPE_CHECKING:
    from upgrader.plan import Check, Plan


def run_checks(ctx: StepContext, checks: "list[Check]", role: str, differential_role: str | None,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """`env`: for the command checks on `role` (not on the differential role)."""
    results: dict[str, Any] = {}
    failed: list[str] = []
    for check in checks:
        result = run_check(ctx, check, role, env)
        entry: dict[str, Any] = {"ok": result.ok, "seen": result.seen}
        if check.differential and differential_role:
            other = run_check(ctx, check, differential_role)
            entry[differential_role] = {"ok": other.ok, "seen": other.seen}
            if other.seen != result.seen:
                ctx.emit(Notice(f"{check.name}: {differential_role} says {other.seen!r}, {role} says {result.seen!r}"))
        results[check.name] = entry
        if not result.ok:
            failed.append(f"{check.name}: {result.seen}")
    if failed:
        raise CheckFailed(
            f"{len(failed)} of {len(checks)} check(s) failed on {role}:\n  - " + "\n  - ".join(failed),
            hint="`upgrader show HOST` has every check's output",
        )
    return results


class ValidateStaging:
    phase = Phase.VALIDATE_STAGING

    def describe(self, plan: "Plan") -> list[str]:
        lines = [f"on the twin: {describe(c)}" + (" (also on prod, compared)" if c.differential else "") for c in plan.validate]
        if any(c.kind == "command" for c in plan.validate):
            lines = packages.describe(plan) + lines
        return lines or ["no validation checks in the plan"]

    def run(self, ctx: StepContext) -> Outcome:
        def checks(_: dict[str, Any]) -> dict[str, Any]:
            if not any(c.kind == "command" for c in ctx.plan.validate):  # nothing on the twin needs the proxy
                return {"checks": run_checks(ctx, list(ctx.plan.validate), "staging", "prod")}
            with packages.proxy_open(ctx) as env:
                return {"checks": run_checks(ctx, list(ctx.plan.validate), "staging", "prod", env)}

        out = ctx.once("validate_staging", f"{len(ctx.plan.validate)} check(s) on the twin", checks)
        return Outcome(out)


class Verify:
    phase = Phase.VERIFY

    def describe(self, plan: "Plan") -> list[str]:
        return [f"at the service address: {describe(c)}" for c in plan.verify_checks] + [
            "on failure: automatic rollback (network back, reverse sync, services restarted on the old VM)"
        ]

    def run(self, ctx: StepContext) -> Outcome:
        out = ctx.once(
            "verify",
            f"{len(ctx.plan.verify_checks)} check(s) on the new prod",
            lambda _: {"checks": run_checks(ctx, list(ctx.plan.verify_checks), "prod", None), "at": ctx.now().isoformat()},
        )
        tell_about_window(ctx, Kind.DONE, "notice.done")
        return Outcome(out)
