"""aborted: the abort's own cleanup. Twin destroyed, its overlay deleted, prod's overlay merged
back so prod ends exactly as it was, nothing left on disk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upgrader.phases import Phase
from upgrader.steps.base import Outcome, StepContext
from upgrader.steps.staging import teardown

if TYPE_CHECKING:
    from upgrader.plan import Plan


class AbortCleanup:
    phase = Phase.ABORTED

    def describe(self, plan: "Plan") -> list[str]:
        return [f"destroy {plan.twin_name} and its overlay; merge {plan.source.domain}'s overlay back; prod untouched"]

    def run(self, ctx: StepContext) -> Outcome:
        return Outcome(teardown(ctx, "abort"), trigger="")
