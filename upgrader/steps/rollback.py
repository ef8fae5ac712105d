"""rolling_back: stop the new prod's writers, network back to the old VM, reverse-sync what was
written to the new prod since cutover (no mail lost), start services on the old VM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.phases import Phase
from upgrader.steps import takeover
from upgrader.steps.base import Outcome, StepContext
from upgrader.notify import Kind
from upgrader.steps.notices import tell_about_window
from upgrader.steps.staging import teardown
from upgrader.steps.sync import run_commands, sync_once

if TYPE_CHECKING:
    from upgrader.plan import Plan


class RollingBack:
    phase = Phase.ROLLING_BACK

    def describe(self, plan: "Plan") -> list[str]:
        return [
            "quiesce the new prod (the twin)",
            f"network back to {plan.source.domain}",
            "reverse rsync twin -> old VM of everything written since cutover",
            f"resume services on {plan.source.domain}",
            f"destroy {plan.twin_name}, merge {plan.source.domain}'s overlay back",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        # Only a takeover that began can have let clients write to the twin; without one the old
        # VM never stopped being the source of truth and a reverse sync would be harmful.
        took_over = "cutover.takeover" in ctx.journal.begun
        if took_over and takeover.taken_over(ctx):
            run_commands(ctx, "rollback.quiesce_new", "prod", list(plan.sync.quiesce), "quiesce")
        ctx.once(
            "rollback.network",
            f"network back to {plan.source.domain}",
            lambda _: takeover.give_back(ctx),
            lambda _: {"probed": True} if takeover.given_back(ctx) else None,
        )
        takeover.claim_address(ctx, "rollback.claim_address")
        stats = sync_once(ctx, "rollback.reverse_sync", "staging", "prod", final=True) if took_over else None
        run_commands(ctx, "rollback.resume_old", "prod", list(plan.sync.resume), "resume services")
        cleaned = teardown(ctx, "rollback")
        tell_about_window(ctx, Kind.ROLLED_BACK, "notice.rolled_back", ctx.record.error.message if ctx.record.error else None)
        return Outcome({"reverse_sync": stats, "cleanup": cleaned}, trigger="rolled_back")
