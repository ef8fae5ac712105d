"""validate_staging: the plan's checks on the twin; differential checks also run on prod and a
check that passes on prod but fails on the twin is a regression."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upgrader.errors import CheckFailed
from upgrader.events import Notice
from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.notify import Kind
from upgrader.steps.checks import describe, run_check
from upgrader.steps.notices import tell_about_window

if TYPE_CHECKING:
    from upgrader.plan import Check, Plan


def run_checks(ctx: StepContext, checks: "list[Check]", role: str, differential_role: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    failed: list[str] = []
    for check in checks:
        result = run_check(ctx, check, role)
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
        return [f"on the twin: {describe(c)}" + (" (also on prod, compared)" if c.differential else "") for c in plan.validate] or [
            "no validation checks in the plan"
        ]

    def run(self, ctx: StepContext) -> Outcome:
        out = ctx.once(
            "validate_staging",
            f"{len(ctx.plan.validate)} check(s) on the twin",
            lambda _: {"checks": run_checks(ctx, list(ctx.plan.validate), "staging", "prod")},
        )
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
