"""cutover: quiesce prod, final sync (must be complete), take the network over, start services
on the new prod. The clock of the downtime runs from quiesce to resume."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from upgrader.phases import Phase
from upgrader.steps import takeover
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.sync import run_commands, sync_once

if TYPE_CHECKING:
    from upgrader.plan import Plan


class Cutover:
    phase = Phase.CUTOVER

    def describe(self, plan: "Plan") -> list[str]:
        return [
            f"quiesce prod: {'; '.join(plan.sync.quiesce) or '(no commands)'}",
            "final rsync prod -> twin (must exit 0)",
            f"takeover ({plan.takeover.strategy}): {plan.source.domain}'s NICs link-down, "
            f"{plan.twin_name}'s NICs onto {plan.takeover.production_network}",
            f"resume services on the new prod: {'; '.join(plan.sync.resume) or '(no commands)'}",
        ]

    def run(self, ctx: StepContext) -> Outcome:
        plan = ctx.plan
        started = time.monotonic()
        run_commands(ctx, "cutover.quiesce", "prod", list(plan.sync.quiesce), "quiesce")
        final = sync_once(ctx, "cutover.final_sync", "prod", "staging", final=True)
        moved = ctx.once(
            "cutover.takeover",
            f"take the network over ({plan.takeover.strategy})",
            lambda _: takeover.takeover(ctx),
            lambda _: {"strategy": plan.takeover.strategy, "probed": True} if takeover.taken_over(ctx) else None,
        )
        run_commands(ctx, "cutover.resume", "prod", list(plan.sync.resume), "resume services")
        out: dict[str, Any] = {"final_sync": final, "takeover": moved, "seconds": round(time.monotonic() - started, 3)}
        return Outcome(out)
