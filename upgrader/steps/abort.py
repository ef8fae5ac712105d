"""aborted: the abort's own cleanup. Twin destroyed, its overlay deleted, prod's overlay merged
back so prod ends exactly as it was, nothing left on disk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.notify import Kind
from upgrader.steps.notices import tell_about_window
from upgrader.steps.staging import teardown

if TYPE_CHECKING:
    from upgrader.plan import Plan


class AbortCleanup:
    phase = Phase.ABORTED

    def describe(self, plan: "Plan") -> list[str]:
        return [f"destroy {plan.twin_name} and its overlay; merge {plan.source.domain}'s overlay back; prod untouched"]

    def run(self, ctx: StepContext) -> Outcome:
        out = teardown(ctx, "abort")
        reason = "the maintenance was called off" + (f": {ctx.record.error.message.splitlines()[0]}" if ctx.record.error else "")
        tell_about_window(ctx, Kind.POSTPONED, "notice.called_off", reason)
        return Outcome(out, trigger="")
