"""A window edit taken by a waiting run (run_plan.py): the window the run had fixed (`window[N]`
in the journal) gives way to the edited plan's next one, fixed as `window[N+1]`, and the
customers are told of the new time (a `postponed` notice carries the new window as an
iCalendar update), like a postponement. A window not fixed yet is fixed by await_window from the
edited plan anyway."""

from __future__ import annotations

from upgrader.phases import BEFORE_CUTOVER
from upgrader.steps.base import StepContext
from upgrader.steps.window import current_slot, fix_slot, tell_postponed
from upgrader.windows import next_slot

__all__ = ["follow_window_edit"]

WHY = "the maintenance window was changed"


def follow_window_edit(ctx: StepContext) -> bool:
    """Refix the run's window from the (edited) plan; True if it moved."""
    window = ctx.plan.window
    if window is None or ctx.record.phase not in BEFORE_CUTOVER or ctx.record.options.now:
        return False
    found = current_slot(ctx)
    if found is None:
        return False
    seq, slot = found
    new = next_slot(window, ctx.now())
    if new is None or new == slot:
        tell_postponed(ctx, seq, slot)  # refixed by a call that died before telling the customers
        return False
    fix_slot(ctx, seq + 1, new, WHY)
    tell_postponed(ctx, seq + 1, new)
    return True
