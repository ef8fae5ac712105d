"""await_window: wait for the announced cutover window. Until scheduled windows land (issue 5),
a run whose plan has no window goes on at once; a plan with a window parks unless the operator
said --now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext

if TYPE_CHECKING:
    from upgrader.plan import Plan


class AwaitWindow:
    phase = Phase.AWAIT_WINDOW

    def describe(self, plan: "Plan") -> list[str]:
        if plan.window is None:
            return ["no window in the plan: cut over right after pre-sync"]
        return [f"park until the cutover window ({plan.window.duration} long, {plan.window.timezone}); `--now` overrides"]

    def run(self, ctx: StepContext) -> Outcome:
        if ctx.plan.window is None:
            return Outcome(ctx.once("await_window", "no window: go on", lambda _: {"decision": "no window"}))
        if ctx.record.options.now:
            return Outcome(ctx.once("await_window", "--now: cut over now", lambda _: {"decision": "now (operator)"}))
        return Outcome(
            park="the plan has a cutover window; scheduled windows are not acted on yet: "
            "`upgrader resume HOST --now` cuts over now"
        )
